"""Loading Champ's released files key-exact: the shared backbone (`sd15.refnet_checkpoints`) and the
guidance encoders `guidance_encoder_<type>.pth`, one file per guidance type.

Each encoder file must hold the 130 tensors of `GuidanceEncoder` (conv stack + `attentions.0-5`) with their
shapes. The released files lack the 19 `guidance_attention.*` tensors of the official class (a transformer
its forward never runs, not built here); a file that does hold all 19 (the class's full state dict
re-saved) is accepted and those tensors are ignored. The released files' sizes also point at about 12 more
tiny tensors (16-32 values each) whose names the released code cannot tell (shared/reference/keys,
champ_guidance_encoder.json); the official loader (`strict=False`) ignores them, so up to
GUIDANCE_SMALL_EXTRAS unknown tensors of at most `SMALL_EXTRA_ELEMENTS` values are ignored too, and logged.
Anything else missing, unexpected or mis-shaped is refused by name. The guidance type of a file is the slot
it is given for, never its file name.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..core.dtypes import check_dtype
from ..errors import MarionetteError
from ..sd15.blocks import DENOISING_LAYOUT, SpatialTransformer
from ..sd15.guidance_convs import EMBEDDING_CHANNELS, RELEASED_CHANNELS
from ..sd15.refnet_checkpoints import CHAMP_SOURCE, RefNetBackbone, layout_of, load_backbone, load_module
from .guidance_encoder import ATTENTION_GROUPS, ATTENTION_HEADS, GUIDANCE_TYPES, ChampGuidance, GuidanceEncoder

GUIDANCE_SMALL_EXTRAS = 16
GUIDANCE_FIX = (f"Pick guidance_encoder_<type>.pth from {CHAMP_SOURCE} for each guidance type "
                f"({', '.join(GUIDANCE_TYPES)}); Moore-AnimateAnyone's pose_guider.pth belongs to the Animate "
                "Anyone model.")


@dataclass
class ChampModel:
    """Champ's loaded modules: the UNets and the guidance encoders (CPU, `dtype`, eval mode)."""
    backbone: RefNetBackbone
    guidance: ChampGuidance
    dtype: torch.dtype
    files: dict[str, str] = field(default_factory=dict)


def unused_attention_layout(channels: tuple[int, ...] = RELEASED_CHANNELS, heads: int = ATTENTION_HEADS,
                            groups: tuple[int, int] = ATTENTION_GROUPS) -> dict[str, tuple[int, ...]]:
    """The 19 `guidance_attention.*` names and shapes of the official class (absent from the released files)."""
    with torch.device("meta"):
        block = SpatialTransformer(channels[-1], heads, None, groups[1], DENOISING_LAYOUT)
    return {f"guidance_attention.{k}": v for k, v in layout_of(block).items()}


def load_guidance_encoder(path: str | os.PathLike, dtype: torch.dtype = torch.float16,
                          channels: tuple[int, ...] = RELEASED_CHANNELS, embedding_channels: int = EMBEDDING_CHANNELS,
                          heads: int = ATTENTION_HEADS, groups: tuple[int, int] = ATTENTION_GROUPS) -> GuidanceEncoder:
    """One `guidance_encoder_<type>.pth`, key-exact (the other arguments: tests' tiny sizes)."""
    dtype = check_dtype(dtype, "Champ guidance encoder")
    return load_module(lambda: GuidanceEncoder(channels, embedding_channels, heads, groups), path,
                       "guidance_encoder", "a Champ guidance encoder", GUIDANCE_FIX, dtype,
                       optional=unused_attention_layout(channels, heads, groups), small_extras=GUIDANCE_SMALL_EXTRAS)


def load_champ_guidance(paths: Mapping[str, str | os.PathLike], dtype: torch.dtype = torch.float16,
                        **sizes) -> ChampGuidance:
    """The guidance encoders by type ({"depth": path, ...}; any non-empty subset of GUIDANCE_TYPES)."""
    unknown = [name for name in paths if name not in GUIDANCE_TYPES]
    if unknown or not paths:
        raise MarionetteError(f"Unknown or no Champ guidance types: {unknown or '(none)'}.",
                              f"Give encoder files for some of: {', '.join(GUIDANCE_TYPES)}.")
    return ChampGuidance({name: load_guidance_encoder(path, dtype, **sizes) for name, path in paths.items()})


def load_champ(denoising_unet: str | os.PathLike, reference_unet: str | os.PathLike,
               motion_module: str | os.PathLike, guidance: Mapping[str, str | os.PathLike],
               dtype: torch.dtype = torch.float16) -> ChampModel:
    """Champ's released model: the three backbone files and the guidance encoder files by type."""
    encoders = load_champ_guidance(guidance, dtype)  # the small files first: a wrong one fails fast
    backbone = load_backbone(denoising_unet, reference_unet, motion_module, dtype)
    files = {**backbone.files, **{f"guidance_encoder_{name}": os.fspath(path) for name, path in guidance.items()}}
    return ChampModel(backbone, encoders, dtype, files)
