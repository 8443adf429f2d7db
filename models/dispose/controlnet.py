"""DisPose's hybrid ControlNet for the SVD-xt UNet (lihxxx/DisPose `ControlNetSVDModel`, file `DisPose.pth`).

A full copy of the SVD UNet's encoder (conv_in, time and micro-conditioning embeddings, the four
spatio-temporal down blocks and the mid block, diffusers' own blocks so the key names match) plus:
- `controlnet_cond_embedding`: the motion-field encoder (flow_encoder.py), added after `conv_in`;
- `point_adapter`: the keypoint-correspondence MLPs (point_adapter.py), added to the hidden state after each
  down block (the down block's own skips do not see it; the deeper blocks do);
- `controlnet_down_blocks` (12 zero-initialised 1x1 convs, one per skip connection of the UNet encoder:
  conv_in, then 2 resnets + 1 downsampler per block, 2 resnets in the last) and `controlnet_mid_block`.
The outputs, times `strength`, are the residuals for the UNet's 12 skips and its mid-block output (inject
them with residuals.py, which also reproduces how the official UNet adds them).

DisPose.pth is `torch.save(state_dict())` of that module: 705 fp32 tensors, no key prefix, saved from CUDA.
The image `controlnet_cond` and `pose_latents`/`dift_feat` of the official forward do not change its result
(only the image's size is read, and it equals the video size), so they are not inputs here.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from torch import nn

from ..errors import MarionetteError
from ..core.checkpoints import load_state_dict_file
from ..svd.configs import svd_xt_unet_config, tiny_unet_config
from .flow_encoder import FLOW_CHANNELS, MotionFieldEmbedding
from .point_adapter import POINT_EMBEDDING_CHANNELS, POINT_HIDDEN_CHANNELS, PointAdapter

CHECKPOINT_NAME = "DisPose.pth"
COMFY_FOLDER = "ComfyUI/models/dispose"
CHECKPOINT_SOURCE = "Hugging Face lihxxx/DisPose"
LATENT_SCALE = 8  # VAE downscale: the video is 8x the latent grid
KEY_COUNT = 705  # tensors in the released DisPose.pth


class ControlNetResiduals(NamedTuple):
    """ControlNet outputs for one UNet call: `down` one tensor per UNet skip connection, in the order the
    encoder produces them ([B*F, C, h, w] each), and `mid` for the mid-block output."""
    down: tuple[torch.Tensor, ...]
    mid: torch.Tensor


def dispose_controlnet_config() -> dict:
    """Constructor arguments of the released ControlNet (a fresh dict, safe to modify)."""
    return {"unet_config": svd_xt_unet_config(), "flow_channels": FLOW_CHANNELS,
            "point_embedding_channels": POINT_EMBEDDING_CHANNELS, "point_hidden_channels": POINT_HIDDEN_CHANNELS}


def tiny_dispose_controlnet_config() -> dict:
    """A structurally complete tiny ControlNet for CPU tests, matching `tiny_unet_config()`."""
    return {"unet_config": tiny_unet_config(), "flow_channels": (4, 8, 8, 16),
            "point_embedding_channels": 16, "point_hidden_channels": 8}


def _per_block(value, blocks: int) -> list:
    return [value] * blocks if isinstance(value, int) else list(value)


class DisPoseControlNet(nn.Module):
    """The ControlNet; build it with `DisPoseControlNet(**dispose_controlnet_config())`.

    Attributes are registered in the official order, so `state_dict()` lists the keys as DisPose.pth does."""

    def __init__(self, unet_config: dict, flow_channels: tuple[int, ...] = FLOW_CHANNELS,
                 point_embedding_channels: int = POINT_EMBEDDING_CHANNELS,
                 point_hidden_channels: int = POINT_HIDDEN_CHANNELS):
        super().__init__()
        cfg = dict(unet_config)
        widths = list(cfg["block_out_channels"])
        blocks = len(widths)
        layers = _per_block(cfg["layers_per_block"], blocks)
        heads = _per_block(cfg["num_attention_heads"], blocks)
        context = _per_block(cfg["cross_attention_dim"], blocks)
        depth = _per_block(cfg["transformer_layers_per_block"], blocks)
        time_dim = widths[0] * 4

        self.conv_in = nn.Conv2d(cfg["in_channels"], widths[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(widths[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(widths[0], time_dim)
        self.add_time_proj = Timesteps(cfg["addition_time_embed_dim"], True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], time_dim)
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([_zero_conv(widths[0])])
        # Down block i's output is 16 x 2^i smaller than the video, except the last one (no downsampler).
        strides = [LATENT_SCALE * 2 ** min(i + 1, blocks - 1) for i in range(blocks)]
        self.point_adapter = PointAdapter(tuple(widths), tuple(strides), point_embedding_channels,
                                          point_hidden_channels)
        self.controlnet_cond_embedding = MotionFieldEmbedding(widths[0], tuple(flow_channels))
        for i, block_type in enumerate(cfg["down_block_types"]):
            last = i == blocks - 1
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=depth[i],
                in_channels=widths[max(i - 1, 0)], out_channels=widths[i], temb_channels=time_dim,
                add_downsample=not last, resnet_eps=1e-5, cross_attention_dim=context[i],
                num_attention_heads=heads[i], resnet_act_fn="silu"))
            skips = layers[i] + (0 if last else 1)
            self.controlnet_down_blocks.extend(_zero_conv(widths[i]) for _ in range(skips))
        self.controlnet_mid_block = _zero_conv(widths[-1])
        self.mid_block = UNetMidBlockSpatioTemporal(
            widths[-1], temb_channels=time_dim, transformer_layers_per_block=depth[-1],
            cross_attention_dim=context[-1], num_attention_heads=heads[-1])
        self.set_attn_processor()

    def set_attn_processor(self) -> None:
        """SDPA attention in every attention layer (as our SVD UNet uses)."""
        for module in self.modules():
            if hasattr(module, "set_processor"):
                module.set_processor(AttnProcessor2_0())

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def _embeddings(self, timestep, added_time_ids: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Timestep + micro-conditioning embedding [batch, 4 C0], computed as in the SVD UNet."""
        batch = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float64 if isinstance(timestep, float) else torch.int64)
        timestep = timestep.to(sample.device).reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        ids = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        return emb + self.add_embedding(ids)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, dense_flow: torch.Tensor | None = None,
                sparse_flow: torch.Tensor | None = None, point_features: list[torch.Tensor] | None = None,
                strength: float = 1.0) -> ControlNetResiduals:
        """Residuals for one UNet call with the same inputs.

        sample [B, F, 8, h, w] (noisy latents + reference latents, exactly what the UNet gets);
        timestep scalar or [B]; encoder_hidden_states [B, tokens, C] (the CLIP context); added_time_ids [B, 3];
        dense_flow, sparse_flow [B or 1, F-1, 2, 8h, 8w]: the window's motion fields after the reference slot,
        in pixels (give both or neither); point_features: `self.point_adapter(...)` for this window (each
        [B or 1, F, C_i, h_i, w_i]), or None; strength: the conditioning scale (official 1.0).
        """
        if sample.ndim != 5:
            raise MarionetteError(f"The DisPose ControlNet takes a [batch, frames, channels, h, w] sample, got "
                                  f"{tuple(sample.shape)}.", "Pass the UNet's input latents.")
        batch, frames = sample.shape[:2]
        emb = self._embeddings(timestep, added_time_ids, sample)
        emb = emb.repeat_interleave(frames, dim=0)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        hidden = self.conv_in(sample.flatten(0, 1))
        motion = self._motion_embedding(dense_flow, sparse_flow, batch, frames, hidden.shape[-2:])
        if motion is not None:
            hidden = hidden + motion
        point_features = self._batched_points(point_features, batch, frames)
        only_spatial = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
        skips = [hidden]
        for i, block in enumerate(self.down_blocks):
            extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
            hidden, block_skips = block(hidden_states=hidden, temb=emb, image_only_indicator=only_spatial, **extra)
            skips.extend(block_skips)
            if point_features is not None:
                hidden = hidden + _fit(point_features[i], hidden, f"keypoint features of level {i}")
        hidden = self.mid_block(hidden_states=hidden, temb=emb, encoder_hidden_states=context,
                                image_only_indicator=only_spatial)
        down = tuple(conv(skip) * strength for conv, skip in zip(self.controlnet_down_blocks, skips))
        return ControlNetResiduals(down, self.controlnet_mid_block(hidden) * strength)

    def _motion_embedding(self, dense_flow, sparse_flow, batch: int, frames: int, latent_hw) -> torch.Tensor | None:
        if dense_flow is None and sparse_flow is None:
            return None
        if dense_flow is None or sparse_flow is None:
            raise MarionetteError("DisPose needs both motion fields (dense and sparse), or neither.",
                                  "Pass the CMP field and the trajectory field together.")
        expected = (frames - 1, 2, latent_hw[0] * LATENT_SCALE, latent_hw[1] * LATENT_SCALE)
        for name, field in (("dense", dense_flow), ("sparse", sparse_flow)):
            if field.ndim != 5 or tuple(field.shape[1:]) != expected or field.shape[0] not in (1, batch):
                raise MarionetteError(
                    f"The {name} motion field has shape {tuple(field.shape)}; this window needs "
                    f"[{batch} or 1, {', '.join(map(str, expected))}] (frames after the reference slot, (dx, dy), "
                    "video height and width).",
                    "Slice the fields with the window's frame indices minus one and keep them at the video size.")
        dense_flow, sparse_flow = (f.expand(batch, *f.shape[1:]) for f in (dense_flow, sparse_flow))
        return self.controlnet_cond_embedding(dense_flow, sparse_flow)

    def _batched_points(self, features, batch: int, frames: int) -> list[torch.Tensor] | None:
        """Point features [B', F, C, h, w] per level -> [B*F, C, h, w]; B' = 1 is shared by every video of the
        batch (the official pipeline repeats them for the unconditional half of CFG)."""
        if features is None:
            return None
        if len(features) != len(self.down_blocks):
            raise MarionetteError(f"Got {len(features)} levels of keypoint features; the ControlNet has "
                                  f"{len(self.down_blocks)} down blocks.", "Pass the point adapter's output as is.")
        out = []
        for level in features:
            if level.ndim != 5 or level.shape[0] not in (1, batch) or level.shape[1] != frames:
                raise MarionetteError(
                    f"Keypoint features of shape {tuple(level.shape)} do not fit a batch of {batch} x {frames} "
                    "frames.", "Compute them for the window's frames (reference slot included).")
            out.append(level.expand(batch, *level.shape[1:]).flatten(0, 1).to(self.dtype))
        return out


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _fit(extra: torch.Tensor, hidden: torch.Tensor, what: str) -> torch.Tensor:
    if extra.shape != hidden.shape:
        raise MarionetteError(
            f"The {what} have shape {tuple(extra.shape)} but the ControlNet's hidden state there is "
            f"{tuple(hidden.shape)}.", "Use a video whose width and height are multiples of 64.")
    return extra


# ------------------------------------------------------------------------------------------ loading
def expected_layout(config: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the ControlNet's state dict (full size by default), built on the meta device."""
    with torch.device("meta"):
        model = DisPoseControlNet(**(config or dispose_controlnet_config()))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_dispose_controlnet(path: str | os.PathLike, dtype: torch.dtype = torch.float16,
                            config: dict | None = None) -> DisPoseControlNet:
    """DisPose.pth -> the ControlNet in `dtype`, on the CPU, in eval mode with gradients off.

    The file must hold exactly the ControlNet's tensors (a `module.` prefix from a wrapped model is removed);
    anything else is a `MarionetteError` that names what is missing or extra. `config` is for tests."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MarionetteError(f"DisPose ControlNet not found: {path}.",
                              f"Download {CHECKPOINT_NAME} ({CHECKPOINT_SOURCE}) into {COMFY_FOLDER}/.")
    state_dict = _strip_prefix(load_state_dict_file(path))
    _check_layout(state_dict, expected_layout(config), os.path.basename(path))
    with torch.device("meta"):
        model = DisPoseControlNet(**(config or dispose_controlnet_config()))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(dtype=dtype).eval().requires_grad_(False)


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "module."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _check_layout(state_dict: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], name: str) -> None:
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    resized = [f"{k} {tuple(v.shape)} instead of {expected[k]}" for k, v in state_dict.items()
               if k in expected and tuple(v.shape) != expected[k]]
    if not (missing or unexpected or resized):
        return
    parts = [f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("with another shape", resized))
             if items]
    hint = ""
    if any(k.startswith("up_blocks.") or k.startswith("unet.") for k in unexpected):
        hint = " It looks like a UNet checkpoint (MimicMotion/SVD), which is loaded as the animation model."
    raise MarionetteError(
        f"{name} is not the DisPose ControlNet: it holds {len(state_dict)} tensors where {CHECKPOINT_NAME} has "
        f"{len(expected)}; {'; '.join(parts)}.{hint}",
        f"Put the released {CHECKPOINT_NAME} ({CHECKPOINT_SOURCE}) into {COMFY_FOLDER}/ and select it.")
