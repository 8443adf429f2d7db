"""Loading Moore-AnimateAnyone's released files key-exact: the shared backbone
(`sd15.refnet_checkpoints`) and `pose_guider.pth` (16 tensors of PoseGuider(320, (16, 32, 96, 256)),
loaded strictly as the official `pose2vid.py` does)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..core.dtypes import check_dtype
from ..sd15.guidance_convs import EMBEDDING_CHANNELS, RELEASED_CHANNELS
from ..sd15.refnet_checkpoints import MOORE_SOURCE, RefNetBackbone, load_backbone, load_module
from .pose_guider import PoseGuider

POSE_GUIDER_FIX = (f"Pick pose_guider.pth from {MOORE_SOURCE}; Champ's guidance_encoder_*.pth belong to the "
                   "Champ model, and other projects' pose_guider.pth files (MusePose, AniPortrait, ...) are other "
                   "networks.")


@dataclass
class AnimateAnyoneModel:
    """Moore-AnimateAnyone's loaded modules (CPU, `dtype`, eval mode)."""
    backbone: RefNetBackbone
    pose_guider: PoseGuider
    dtype: torch.dtype
    files: dict[str, str] = field(default_factory=dict)


def load_pose_guider(path: str | os.PathLike, dtype: torch.dtype = torch.float16,
                     channels: tuple[int, ...] = RELEASED_CHANNELS,
                     embedding_channels: int = EMBEDDING_CHANNELS) -> PoseGuider:
    """`pose_guider.pth`, key-exact (channels: tests' tiny sizes)."""
    dtype = check_dtype(dtype, "Animate Anyone pose guider")
    return load_module(lambda: PoseGuider(channels, embedding_channels), path, "pose_guider",
                       "Moore-AnimateAnyone's PoseGuider (16, 32, 96, 256)", POSE_GUIDER_FIX, dtype)


def load_animate_anyone(denoising_unet: str | os.PathLike, reference_unet: str | os.PathLike,
                        motion_module: str | os.PathLike, pose_guider: str | os.PathLike,
                        dtype: torch.dtype = torch.float16) -> AnimateAnyoneModel:
    """Moore-AnimateAnyone's released model from its four files."""
    guider = load_pose_guider(pose_guider, dtype)
    backbone = load_backbone(denoising_unet, reference_unet, motion_module, dtype)
    return AnimateAnyoneModel(backbone, guider, dtype, {**backbone.files, "pose_guider": os.fspath(pose_guider)})
