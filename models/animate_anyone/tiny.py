"""A tiny random Animate Anyone model (backbone + pose guider) for tests and the demo."""
from __future__ import annotations

import torch

from ..core.modules import finish
from ..core.seeding import seeded
from ..sd15.refnet_tiny import TINY_UNET, tiny_backbone
from .loading import AnimateAnyoneModel
from .pose_guider import PoseGuider

TINY_CHANNELS = (8, 8, 16, 16)


def tiny_pose_guider() -> PoseGuider:
    return PoseGuider(TINY_CHANNELS, TINY_UNET["block_out_channels"][0])


def tiny_animate_anyone(seed: int = 0, dtype: torch.dtype = torch.float32) -> AnimateAnyoneModel:
    """Deterministic for `seed`."""
    backbone = tiny_backbone(seed, dtype)
    with seeded(seed + 1):
        guider = tiny_pose_guider()
    return AnimateAnyoneModel(backbone, finish(guider, dtype), dtype, {})
