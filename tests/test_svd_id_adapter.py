"""StableAnimator ID adapter: the processor's math against a plain-torch re-derivation of the official
normalised ID attention, its edge cases (zero face tokens, scale 0), and where install_id_adapter puts it."""
import math
import re

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from marionette.models.errors import MarionetteError
from marionette.models.svd.configs import tiny_unet_config
from marionette.models.stableanimator.id_adapter import (CLIPContextAttnProcessor, IDAdapterAttnProcessor,
                                              align_to_reference, id_adapter_processors, install_id_adapter)
from marionette.models.svd.unet import build_unet

QUERY_DIM, CONTEXT_DIM, HEADS, HEAD_DIM, FACE_TOKENS = 32, 24, 2, 16, 4


def make_layer(seed: int = 0, scale: float = 1.0):
    """A cross-attention layer built as SVD's spatial attn2 is, with random weights and an adapter."""
    torch.manual_seed(seed)
    attn = Attention(query_dim=QUERY_DIM, cross_attention_dim=CONTEXT_DIM, heads=HEADS, dim_head=HEAD_DIM,
                     bias=False, out_bias=True)
    processor = IDAdapterAttnProcessor(HEADS * HEAD_DIM, CONTEXT_DIM, FACE_TOKENS, scale)
    with torch.no_grad():
        for p in list(attn.parameters()) + list(processor.parameters()):
            p.normal_(0.0, 0.3)
    attn.set_processor(processor)
    return attn.eval()


def inputs(seed: int = 1, frames: int = 3, tokens: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, tokens, QUERY_DIM, generator=g)
    context = torch.randn(frames, 1 + FACE_TOKENS, CONTEXT_DIM, generator=g)
    return x, context


def heads_attention(q, k, v, heads):
    """Softmax attention head by head, with an explicit max-shifted softmax."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        logits = torch.einsum("bnd,bmd->bnm", q[..., cols], k[..., cols]) / math.sqrt(d)
        p = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
        out.append(torch.einsum("bnm,bmd->bnd", p / p.sum(dim=-1, keepdim=True), v[..., cols]))
    return torch.cat(out, dim=-1)


def moments(t):
    """Per-sample mean and unbiased std over everything but dim 0."""
    flat = t.reshape(t.shape[0], -1)
    n = flat.shape[1]
    mean = flat.sum(dim=1) / n
    std = torch.sqrt(((flat - mean[:, None]) ** 2).sum(dim=1) / (n - 1))
    return mean[:, None, None], std[:, None, None]


def rederived(attn, x, context, scale, eps=1e-5):
    """The official normalised ID attention in float64, written from its description, not from our code.
    Returns (layer output, image-branch attention before to_out)."""
    w = {name: p.detach().double() for name, p in attn.named_parameters()}
    x, context = x.double(), context.double()
    clip, face = context[:, :-FACE_TOKENS], context[:, -FACE_TOKENS:]
    q = x @ w["to_q.weight"].T
    image = heads_attention(q, clip @ w["to_k.weight"].T, clip @ w["to_v.weight"].T, HEADS)
    face_out = heads_attention(q, face @ w["processor.id_to_k.weight"].T, face @ w["processor.id_to_v.weight"].T,
                               HEADS)
    mean_i, std_i = moments(image)
    mean_f, std_f = moments(face_out)
    aligned = (face_out - mean_f) / (std_f + eps) * std_i + mean_i
    out = (image + scale * aligned) @ w["to_out.0.weight"].T + w["to_out.0.bias"]
    return out, image


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_processor_matches_the_rederived_official_math(scale):
    attn = make_layer(seed=0, scale=scale)
    x, context = inputs()
    expected, _ = rederived(attn, x, context, scale)
    with torch.no_grad():
        ours32 = attn(x, encoder_hidden_states=context)
        ours64 = attn.double()(x.double(), encoder_hidden_states=context.double())
    assert ours32.shape == (3, 7, QUERY_DIM)
    assert (ours32.double() - expected).abs().max() < 1e-5
    assert (ours64 - expected).abs().max() < 1e-12


def test_zero_face_tokens_add_the_image_mean_before_to_out():
    """Unconditional CFG branch quirk: A_face = 0, std 0, so the layer gives to_out(A_img + mean(A_img))."""
    attn = make_layer(seed=2)
    x, context = inputs(seed=3)
    context[:, 1:] = 0.0
    with torch.no_grad():
        ours = attn(x, encoder_hidden_states=context)
        plain = AttnProcessor2_0()(attn, x, encoder_hidden_states=context[:, :1])
    _, image = rederived(attn, x, context, 1.0)
    mean_image, _ = moments(image)
    row_sums = attn.to_out[0].weight.detach().double().sum(dim=1)
    expected = plain.double() + mean_image * row_sums
    assert (ours.double() - expected).abs().max() < 1e-5


def test_zero_id_weights_make_the_face_tokens_irrelevant():
    attn = make_layer(seed=4)
    with torch.no_grad():
        attn.processor.id_to_k.weight.zero_()
        attn.processor.id_to_v.weight.zero_()
        x, context = inputs(seed=5)
        other = context.clone()
        other[:, 1:] = torch.randn_like(other[:, 1:])
        assert torch.equal(attn(x, encoder_hidden_states=context), attn(x, encoder_hidden_states=other))


def test_scale_zero_is_the_plain_cross_attention_on_the_clip_token():
    attn = make_layer(seed=6, scale=0.0)
    x, context = inputs(seed=7)
    with torch.no_grad():
        ours = attn(x, encoder_hidden_states=context)
        plain = AttnProcessor2_0()(attn, x, encoder_hidden_states=context[:, :1])
    assert (ours - plain).abs().max() < 1e-6


def test_face_tokens_change_the_output_with_real_weights():
    attn = make_layer(seed=8)
    x, context = inputs(seed=9)
    other = context.clone()
    other[:, 1:] += 1.0
    with torch.no_grad():
        delta = attn(x, encoder_hidden_states=context) - attn(x, encoder_hidden_states=other)
    assert delta.abs().max() > 1e-3


def test_alignment_gives_the_reference_moments_per_sample():
    g = torch.Generator().manual_seed(10)
    face = torch.randn(4, 9, 6, generator=g) * 3.0 + 2.0
    image = torch.randn(4, 9, 6, generator=g) * torch.tensor([0.5, 1.0, 2.0, 4.0])[:, None, None] - 1.0
    aligned = align_to_reference(face.double(), image.double())
    mean_a, std_a = moments(aligned)
    mean_i, std_i = moments(image.double())
    assert (mean_a - mean_i).abs().max() < 1e-12
    assert ((std_a - std_i) / std_i).abs().max() < 1e-5  # eps 1e-5 on the face std only


def test_clip_context_processor_drops_the_face_tokens():
    torch.manual_seed(11)
    attn = Attention(query_dim=QUERY_DIM, cross_attention_dim=CONTEXT_DIM, heads=HEADS, dim_head=HEAD_DIM).eval()
    x, context = inputs(seed=12)
    other = context.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])
    processor = CLIPContextAttnProcessor(FACE_TOKENS)
    with torch.no_grad():
        ours = processor(attn, x, encoder_hidden_states=context)
        assert torch.equal(ours, processor(attn, x, encoder_hidden_states=other))
        assert torch.equal(ours, AttnProcessor2_0()(attn, x, encoder_hidden_states=context[:, :1]))


@pytest.mark.parametrize("context", [None, torch.zeros(3, 4, CONTEXT_DIM), torch.zeros(3, CONTEXT_DIM)])
def test_a_context_without_clip_and_face_tokens_is_rejected(context):
    attn = make_layer()
    x, _ = inputs()
    with pytest.raises(MarionetteError, match="context|tokens"):
        attn(x, encoder_hidden_states=context)
    with pytest.raises(MarionetteError):
        CLIPContextAttnProcessor(FACE_TOKENS)(attn, x, encoder_hidden_states=context)


def test_install_puts_the_adapter_on_exactly_the_spatial_cross_attentions():
    torch.manual_seed(13)
    unet = build_unet(tiny_unet_config())
    before = unet.state_dict()
    names = install_id_adapter(unet, num_face_tokens=FACE_TOKENS, scale=0.7)
    spatial = [n for n, _ in unet.named_modules() if re.search(r"\.transformer_blocks\.\d+\.attn2$", n)]
    temporal = [n for n, _ in unet.named_modules() if re.search(r"\.temporal_transformer_blocks\.\d+\.attn2$", n)]
    assert names == spatial and len(spatial) == 4  # down 1 + mid 1 + up 2 in the tiny config
    assert list(id_adapter_processors(unet)) == spatial
    modules = dict(unet.named_modules())
    for name in spatial:
        processor = modules[name].processor
        assert isinstance(processor, IDAdapterAttnProcessor) and processor.scale == 0.7
        assert torch.equal(processor.id_to_k.weight, before[f"{name}.to_k.weight"])  # official initialisation
        assert torch.equal(processor.id_to_v.weight, before[f"{name}.to_v.weight"])
    assert all(isinstance(modules[n].processor, CLIPContextAttnProcessor) for n in temporal)
    others = {type(a.processor) for n, a in modules.items()
              if isinstance(a, Attention) and n not in spatial + temporal}
    assert others == {AttnProcessor2_0}
    added = set(unet.state_dict()) - set(before)
    assert added == {f"{n}.processor.id_to_{kv}.weight" for n in spatial for kv in "kv"}
    with pytest.raises(MarionetteError, match="already"):
        install_id_adapter(unet)
