"""The two UNets of the SD1.5 ReferenceNet family (Champ, Moore-AnimateAnyone), key-exact to their files.

- Denoising UNet3D (`build_denoising_unet`): the SD1.5 UNet applied to every frame (frames folded into the
  batch; the official "inflated" convs and group norms are exactly that) plus 21 AnimateDiff-v2 motion
  modules: two after every (resnet, transformer) pair of the three cross-attention down levels and after
  the resnets of the fourth, one in the mid block (resnet -> transformer -> motion -> resnet), three in
  every up level. Its 2D weights are `denoising_unet.pth` (686 tensors), its motion weights
  `motion_module.pth` (588). Pose/guidance features [B, 320, F, h, w] are added right after `conv_in`,
  before the first skip connection.
- Reference UNet (`build_reference_unet`): the same SD1.5 UNet as a 2D net without `conv_norm_out` and
  `conv_out` (`reference_unet.pth`, 682 tensors); it only exists to feed reference attention
  (`reference.py`), so its forward returns nothing.

Configs are diffusers' SD1.5 `unet/config.json` values (`SD15_UNET_CONFIG`); `attention_head_dim` keeps
its legacy meaning, the number of heads.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import MarionetteError
from .blocks import (DENOISING_LAYOUT, REFERENCE_LAYOUT, Downsample, ResnetBlock, SpatialTransformer,
                     TimestepEmbedding, TransformerBlock, Upsample, timestep_features)
from .loader import SD15_UNET_CONFIG
from .motion import MotionModule

# configs/inference/inference.yaml (Champ) = inference_v2.yaml (Moore): motion_module_kwargs
MOTION_CONFIG = {"num_attention_heads": 8, "temporal_position_encoding_max_len": 32, "mid_block": True,
                 "norm_num_groups": 32}
CROSS_DOWN, CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"


def sd15_unet_config() -> dict:
    """SD1.5's UNet config (a fresh copy)."""
    return copy.deepcopy(SD15_UNET_CONFIG)


def motion_config() -> dict:
    """The released motion modules' config (a fresh copy)."""
    return dict(MOTION_CONFIG)


class UNetLevel(nn.Module):
    """One down, mid or up level: `attentions`, `resnets`, `motion_modules`, then the resampler (the
    official 3D blocks' registration order; without motion modules it is diffusers' 2D order)."""

    def __init__(self, resnets: list[ResnetBlock], attentions: list[SpatialTransformer] | None,
                 motions: list[MotionModule] | None, resampler: tuple[str, nn.Module] | None):
        super().__init__()
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        if motions:
            self.motion_modules = nn.ModuleList(motions)
        if resampler is not None:
            self.add_module(resampler[0], nn.ModuleList([resampler[1]]))

    def layer(self, index: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
              frames: int) -> torch.Tensor:
        """resnet -> transformer -> motion module of position `index`."""
        x = self.resnets[index](x, temb)
        if hasattr(self, "attentions"):
            x = self.attentions[index](x, context)
        if hasattr(self, "motion_modules"):
            x = self.motion_modules[index](x, frames)
        return x


class RefNetUNet(nn.Module):
    """SD1.5 UNet with optional motion modules (`motion`) and optional output head (`output_head`)."""

    def __init__(self, config: dict, motion: dict | None, output_head: bool, layout: tuple[str, ...]):
        super().__init__()
        self.config = dict(config)
        self.motion_config = dict(motion) if motion else None
        channels = list(config["block_out_channels"])
        heads, context_dim = int(config["attention_head_dim"]), int(config["cross_attention_dim"])
        groups, eps = int(config["norm_num_groups"]), float(config["norm_eps"])
        per_level = int(config["layers_per_block"])
        temb_channels = channels[0] * 4

        def motions(width, count):
            if not motion:
                return None
            return [MotionModule(width, motion["num_attention_heads"], motion["norm_num_groups"],
                                 motion["temporal_position_encoding_max_len"]) for _ in range(count)]

        def transformers(width, count, cross):
            if not cross:
                return None
            return [SpatialTransformer(width, heads, context_dim, groups, layout) for _ in range(count)]

        self.conv_in = nn.Conv2d(config["in_channels"], channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels)
        self.down_blocks, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        width = channels[0]
        for level, (kind, out) in enumerate(zip(config["down_block_types"], channels)):
            resnets = [ResnetBlock(width if i == 0 else out, out, temb_channels, groups, eps) for i in range(per_level)]
            last = level == len(channels) - 1
            resampler = None if last else ("downsamplers", Downsample(out))
            self.down_blocks.append(UNetLevel(resnets, transformers(out, per_level, kind == CROSS_DOWN),
                                              motions(out, per_level), resampler))
            width = out
        reversed_channels = channels[::-1]
        previous = reversed_channels[0]
        for level, (kind, out) in enumerate(zip(config["up_block_types"], reversed_channels)):
            skip = reversed_channels[min(level + 1, len(channels) - 1)]
            resnets = [ResnetBlock((previous if i == 0 else out) + (skip if i == per_level else out), out,
                                   temb_channels, groups, eps) for i in range(per_level + 1)]
            last = level == len(channels) - 1
            resampler = None if last else ("upsamplers", Upsample(out))
            self.up_blocks.append(UNetLevel(resnets, transformers(out, per_level + 1, kind == CROSS_UP),
                                            motions(out, per_level + 1), resampler))
            previous = out
        mid = channels[-1]
        self.mid_block = UNetLevel([ResnetBlock(mid, mid, temb_channels, groups, eps) for _ in range(2)],
                                   transformers(mid, 1, True),
                                   motions(mid, 1) if motion and motion.get("mid_block", True) else None, None)
        if output_head:
            self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)
            self.conv_out = nn.Conv2d(channels[0], config["out_channels"], 3, padding=1)

    # ------------------------------------------------------------------------------------- helpers
    def transformer_blocks(self) -> list[TransformerBlock]:
        """The 16 spatial self-attention blocks in the official pairing order: down, mid, up."""
        levels = list(self.down_blocks) + [self.mid_block] + list(self.up_blocks)
        return [block for level in levels for attention in getattr(level, "attentions", [])
                for block in attention.transformer_blocks]

    def motion_modules(self) -> list[MotionModule]:
        return [m for m in self.modules() if isinstance(m, MotionModule)]

    @property
    def max_frames(self) -> int | None:
        """The longest window the motion modules take (their `pe` length), None without motion modules."""
        modules = self.motion_modules()
        return modules[0].temporal_transformer.transformer_blocks[0].attention_blocks[0].pos_encoder.pe.shape[1] \
            if modules else None

    def _embedding(self, timestep, batch: int, frames: int, device, dtype) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(1).expand(batch) if t.ndim == 0 or t.numel() == 1 else t.reshape(batch)
        features = timestep_features(t, self.conv_in.out_channels).to(dtype)
        return self.time_embedding(features).repeat_interleave(frames, dim=0)

    def _run(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, frames: int,
             residual: torch.Tensor | None) -> torch.Tensor:
        x = self.conv_in(x)
        if residual is not None:
            x = x + residual
        skips = [x]
        for level in self.down_blocks:
            for i in range(len(level.resnets)):
                x = level.layer(i, x, temb, context, frames)
                skips.append(x)
            if hasattr(level, "downsamplers"):
                x = level.downsamplers[0](x)
                skips.append(x)
        mid = self.mid_block
        x = mid.resnets[0](x, temb)
        x = mid.attentions[0](x, context)
        if hasattr(mid, "motion_modules"):
            x = mid.motion_modules[0](x, frames)
        x = mid.resnets[1](x, temb)
        for level in self.up_blocks:
            for i in range(len(level.resnets)):
                x = torch.cat([x, skips.pop()], dim=1)
                x = level.layer(i, x, temb, context, frames)
            if hasattr(level, "upsamplers"):
                x = level.upsamplers[0](x, skips[-1].shape[-2:])
        return x


class DenoisingUNet3D(RefNetUNet):
    """The denoising UNet3D. forward(sample [B, 4, F, h, w], timestep (scalar or [B]),
    encoder_hidden_states [B, N, 768] (the CLIP image token), guidance_features [B, 320, F, h, w] or None)
    -> the model output (v-prediction) [B, 4, F, h, w]. Reference attention is switched on around a call
    with `reference.reference_attention`."""

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                guidance_features: torch.Tensor | None = None) -> torch.Tensor:
        if sample.ndim != 5:
            raise MarionetteError(f"The denoising UNet takes latents [batch, channels, frames, h, w]; got "
                                  f"{tuple(sample.shape)}.", "Stack the frame latents on dim 2.")
        batch, channels, frames, height, width = sample.shape
        limit = self.max_frames
        if limit is not None and frames > limit:
            raise MarionetteError(f"{frames} frames in one UNet call; the motion modules take at most {limit}.",
                                  f"Sample in context windows of at most {limit} frames (the official 24).")
        x = sample.transpose(1, 2).reshape(batch * frames, channels, height, width)
        residual = None
        if guidance_features is not None:
            expected = (batch, self.conv_in.out_channels, frames, height, width)
            if tuple(guidance_features.shape) != expected:
                raise MarionetteError(f"Guidance features have shape {tuple(guidance_features.shape)}; this call "
                                      f"needs {expected}.", "Encode one guidance map per frame at the video size "
                                      "(8x the latent size) and stack them on dim 2.")
            residual = guidance_features.transpose(1, 2).reshape(batch * frames, -1, height, width).to(x.dtype)
        context = _context(encoder_hidden_states, batch, x.dtype).repeat_interleave(frames, dim=0)
        temb = self._embedding(timestep, batch, frames, x.device, x.dtype)
        x = self._run(x, temb, context, frames, residual)
        x = self.conv_out(torch.nn.functional.silu(self.conv_norm_out(x)))
        return x.reshape(batch, frames, -1, height, width).transpose(1, 2)


class ReferenceUNet(RefNetUNet):
    """The reference UNet. forward(sample [B, 4, h, w], timestep, encoder_hidden_states [B, N, 768]) runs the
    net for its transformer blocks' side effect (reference attention records `norm1` outputs) and
    returns None; use `reference.record_reference` rather than calling it directly."""

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> None:
        if sample.ndim != 4:
            raise MarionetteError(f"The reference UNet takes latents [batch, channels, h, w]; got "
                                  f"{tuple(sample.shape)}.", "Pass the reference image's latent.")
        batch = sample.shape[0]
        context = _context(encoder_hidden_states, batch, sample.dtype)
        temb = self._embedding(timestep, batch, 1, sample.device, sample.dtype)
        self._run(sample, temb, context, 1, None)
        return None


def _context(states: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    if states.ndim != 3 or states.shape[0] not in (1, batch):
        raise MarionetteError(f"encoder_hidden_states must be [batch, tokens, channels] with batch 1 or {batch}; "
                              f"got {tuple(states.shape)}.", "Pass the CLIP image embedding as [B, 1, 768].")
    return states.to(dtype).expand(batch, -1, -1)


def _checked(config: dict | None) -> dict:
    config = sd15_unet_config() if config is None else dict(config)
    needed = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "attention_head_dim",
              "cross_attention_dim", "norm_num_groups", "norm_eps", "down_block_types", "up_block_types")
    missing = [k for k in needed if k not in config]
    if missing:
        raise MarionetteError(f"The UNet config lacks {', '.join(missing)}.", "Start from sd15_unet_config().")
    return config


def build_denoising_unet(config: dict | None = None, motion: dict | None = None) -> DenoisingUNet3D:
    """The denoising UNet3D (SD1.5 config by default, motion modules as released by default), eval mode.
    Build under `torch.device("meta")` before loading weights."""
    return DenoisingUNet3D(_checked(config), motion_config() if motion is None else motion, True,
                           DENOISING_LAYOUT).eval()


def build_reference_unet(config: dict | None = None) -> ReferenceUNet:
    """The reference UNet (no output head), eval mode."""
    return ReferenceUNet(_checked(config), None, False, REFERENCE_LAYOUT).eval()


def split_denoising_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """A denoising UNet3D state dict -> (its `denoising_unet.pth` part, its `motion_module.pth` part)."""
    spatial = {k: v for k, v in state.items() if "motion_modules." not in k}
    motion = {k: v for k, v in state.items() if "motion_modules." in k}
    return spatial, motion
