"""An independent re-derivation of the Champ / Moore-AnimateAnyone forward maths in plain torch ops, for the
parity tests. It shares no code with `models.sd15` / `models.champ` / `models.animate_anyone`: it reads the
weights from a state dict by their released names and follows the official code's order of operations
(models/unet_3d.py, unet_3d_blocks.py, motion_module.py, transformer_3d.py, attention.py,
mutual_self_attention.py, guidance_encoder.py / pose_guider.py): norms, softmax attention, GEGLU and
position tables are written out; only convolutions and nearest upsampling use torch.nn.functional.
"""
import math

import torch
import torch.nn.functional as F


def linear(x, W, p, bias=True):
    y = x @ W[p + ".weight"].t()
    return y + W[p + ".bias"] if bias else y


def group_norm(x, groups, weight, bias, eps):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    g = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return g * weight.reshape(shape) + bias.reshape(shape)


def layer_norm(x, W, p, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * W[p + ".weight"] + W[p + ".bias"]


def silu(x):
    return x * torch.sigmoid(x)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def softmax_attention(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    qh = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    kh = k.reshape(b, k.shape[1], heads, d).permute(0, 2, 1, 3)
    vh = v.reshape(b, v.shape[1], heads, d).permute(0, 2, 1, 3)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    scores = scores - scores.amax(-1, keepdim=True)
    weights = torch.exp(scores)
    weights = weights / weights.sum(-1, keepdim=True)
    return (weights @ vh).permute(0, 2, 1, 3).reshape(b, n, c)


def attention(x, kv, W, p, heads):
    q, k, v = linear(x, W, p + ".to_q", False), linear(kv, W, p + ".to_k", False), linear(kv, W, p + ".to_v", False)
    return linear(softmax_attention(q, k, v, heads), W, p + ".to_out.0")


def feed_forward(x, W, p):
    hidden, gate = linear(x, W, p + ".net.0.proj").chunk(2, dim=-1)
    return linear(hidden * gelu(gate), W, p + ".net.2")


def conv(x, W, p, stride=1):
    weight = W[p + ".weight"]
    return F.conv2d(x, weight, W[p + ".bias"], stride=stride, padding=weight.shape[-1] // 2)


def position_table(frames, channels, dtype):
    """AnimateDiff's PositionalEncoding, element by element."""
    table = torch.zeros(frames, channels, dtype=torch.float64)
    for pos in range(frames):
        for i in range(0, channels, 2):
            angle = pos / (10000.0 ** (i / channels))
            table[pos, i] = math.sin(angle)
            if i + 1 < channels:
                table[pos, i + 1] = math.cos(angle)
    return table.to(dtype)


# ----------------------------------------------------------------------------------------- blocks
def transformer_block(x, W, p, heads, context=None, bank=None, record=None):
    """TemporalBasicTransformerBlock / BasicTransformerBlock, with ReferenceAttentionControl's write
    (record the norm1 output) and read (attn1 keys/values from [norm1 output ; bank repeated per row])."""
    normed = layer_norm(x, W, p + ".norm1")
    if record is not None:
        record[p] = normed
    kv = normed
    if bank is not None:
        kv = torch.cat([normed, bank.expand(normed.shape[0], -1, -1)], dim=1)
    x = attention(normed, kv, W, p + ".attn1", heads) + x
    if p + ".attn2.to_q.weight" in W:
        x = attention(layer_norm(x, W, p + ".norm2"), context, W, p + ".attn2", heads) + x
    return feed_forward(layer_norm(x, W, p + ".norm3"), W, p + ".ff") + x


def spatial_transformer(x, W, p, heads, groups, context=None, banks=None, record=None):
    n, c, h, w = x.shape
    y = group_norm(x, groups, W[p + ".norm.weight"], W[p + ".norm.bias"], 1e-6)
    y = conv(y, W, p + ".proj_in").permute(0, 2, 3, 1).reshape(n, h * w, c)
    name = p + ".transformer_blocks.0"
    y = transformer_block(y, W, name, heads, context, None if banks is None else banks[name], record)
    y = y.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return conv(y, W, p + ".proj_out") + x


def motion_module(x, W, p, frames, heads, groups):
    """VanillaTemporalModule on [(b f), c, h, w]."""
    p = p + ".temporal_transformer"
    bf, c, h, w = x.shape
    b, d = bf // frames, h * w
    tokens = group_norm(x, groups, W[p + ".norm.weight"], W[p + ".norm.bias"], 1e-6)
    tokens = linear(tokens.permute(0, 2, 3, 1).reshape(bf, d, c), W, p + ".proj_in")
    block = p + ".transformer_blocks.0"
    for i in range(2):
        normed = layer_norm(tokens, W, f"{block}.norms.{i}")
        seq = normed.reshape(b, frames, d, c).permute(0, 2, 1, 3).reshape(b * d, frames, c)
        seq = seq + W[f"{block}.attention_blocks.{i}.pos_encoder.pe"][:, :frames]  # stored (checked separately)
        out = attention(seq, seq, W, f"{block}.attention_blocks.{i}", heads)
        tokens = out.reshape(b, d, frames, c).permute(0, 2, 1, 3).reshape(bf, d, c) + tokens
    tokens = feed_forward(layer_norm(tokens, W, block + ".ff_norm"), W, block + ".ff") + tokens
    tokens = linear(tokens, W, p + ".proj_out")
    return tokens.reshape(bf, h, w, c).permute(0, 3, 1, 2) + x


def resnet(x, temb, W, p, groups):
    h = conv(silu(group_norm(x, groups, W[p + ".norm1.weight"], W[p + ".norm1.bias"], 1e-5)), W, p + ".conv1")
    h = h + linear(silu(temb), W, p + ".time_emb_proj")[:, :, None, None]
    h = conv(silu(group_norm(h, groups, W[p + ".norm2.weight"], W[p + ".norm2.bias"], 1e-5)), W, p + ".conv2")
    shortcut = conv(x, W, p + ".conv_shortcut") if p + ".conv_shortcut.weight" in W else x
    return shortcut + h


def time_embedding(t, W, channels, dtype):
    """diffusers' get_timestep_embedding as the official UNets call it: float32 whatever the run dtype."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half  # float32 ops, as diffusers
    args = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1) * torch.exp(exponent)[None]
    features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype)  # flip_sin_to_cos
    return linear(silu(linear(features, W, "time_embedding.linear_1")), W, "time_embedding.linear_2")


def unet(W, sample, t, context, *, heads, groups, motion=None, guidance=None, banks=None, record=None):
    """The official UNet3DConditionModel.forward (sample [b, c, f, h, w]) or, with sample [b, c, h, w] and
    `record`, the reference UNet2DConditionModel in ReferenceAttentionControl's write mode.
    motion: (heads, groups) of the motion modules, or None."""
    video = sample.ndim == 5
    b = sample.shape[0]
    frames = sample.shape[2] if video else 1
    x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, *sample.shape[1:2], *sample.shape[3:]) if video else sample
    ctx = context.repeat_interleave(frames, dim=0)
    temb = time_embedding(t, W, W["conv_in.weight"].shape[0], x.dtype).expand(b, -1).repeat_interleave(frames, 0)
    x = conv(x, W, "conv_in")
    if guidance is not None:
        x = x + guidance.permute(0, 2, 1, 3, 4).reshape(x.shape)
    skips = [x]

    def layer(x, p, j):
        x = resnet(x, temb, W, f"{p}.resnets.{j}", groups)
        if f"{p}.attentions.{j}.norm.weight" in W:
            x = spatial_transformer(x, W, f"{p}.attentions.{j}", heads, groups, ctx, banks, record)
        if motion is not None and f"{p}.motion_modules.{j}.temporal_transformer.norm.weight" in W:
            x = motion_module(x, W, f"{p}.motion_modules.{j}", frames, *motion)
        return x

    levels = 1 + max(int(k.split(".")[1]) for k in W if k.startswith("down_blocks."))
    for i in range(levels):
        p = f"down_blocks.{i}"
        count = 1 + max(int(k.split(".")[3]) for k in W if k.startswith(p + ".resnets."))
        for j in range(count):
            x = layer(x, p, j)
            skips.append(x)
        if p + ".downsamplers.0.conv.weight" in W:
            x = conv(x, W, p + ".downsamplers.0.conv", stride=2)
            skips.append(x)
    x = resnet(x, temb, W, "mid_block.resnets.0", groups)
    x = spatial_transformer(x, W, "mid_block.attentions.0", heads, groups, ctx, banks, record)
    if motion is not None and "mid_block.motion_modules.0.temporal_transformer.norm.weight" in W:
        x = motion_module(x, W, "mid_block.motion_modules.0", frames, *motion)
    x = resnet(x, temb, W, "mid_block.resnets.1", groups)
    for i in range(levels):
        p = f"up_blocks.{i}"
        count = 1 + max(int(k.split(".")[3]) for k in W if k.startswith(p + ".resnets."))
        for j in range(count):
            x = layer(torch.cat([x, skips.pop()], dim=1), p, j)
        if p + ".upsamplers.0.conv.weight" in W:
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), W, p + ".upsamplers.0.conv")
    if "conv_out.weight" not in W:
        return None
    x = conv(silu(group_norm(x, groups, W["conv_norm_out.weight"], W["conv_norm_out.bias"], 1e-5)), W, "conv_out")
    return x.reshape(b, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)


def guidance_encoder(W, maps, heads=None, groups=None):
    """PoseGuider (no `attentions.*` in W) or Champ's GuidanceEncoder (only attentions[-1] runs)."""
    x = silu(conv(maps, W, "conv_in"))
    count = 1 + max(int(k.split(".")[1]) for k in W if k.startswith("blocks."))
    for i in range(count):
        x = silu(conv(x, W, f"blocks.{i}", stride=2 if i % 2 else 1))
    if "attentions.0.norm.weight" in W:
        last = max(int(k.split(".")[1]) for k in W if k.startswith("attentions."))
        x = spatial_transformer(x, W, f"attentions.{last}", heads, groups)
    return conv(x, W, "conv_out")
