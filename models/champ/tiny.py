"""A tiny random Champ model (backbone + one guidance encoder per type) for tests and the demo."""
from __future__ import annotations

import torch

from ..core.modules import finish
from ..core.seeding import seeded
from ..sd15.refnet_tiny import TINY_UNET, tiny_backbone
from .guidance_encoder import GUIDANCE_TYPES, ChampGuidance, GuidanceEncoder
from .loading import ChampModel

TINY_CHANNELS = (8, 8, 16, 16)
TINY_HEADS, TINY_GROUPS = 2, (1, 8)


def tiny_guidance_encoder() -> GuidanceEncoder:
    return GuidanceEncoder(TINY_CHANNELS, TINY_UNET["block_out_channels"][0], TINY_HEADS, TINY_GROUPS)


def tiny_champ(seed: int = 0, dtype: torch.dtype = torch.float32,
               types: tuple[str, ...] = GUIDANCE_TYPES) -> ChampModel:
    """Deterministic for `seed`; `types`: which guidance encoders it has."""
    backbone = tiny_backbone(seed, dtype)
    with seeded(seed + 1):
        encoders = {name: tiny_guidance_encoder() for name in types}
    return ChampModel(backbone, finish(ChampGuidance(encoders), dtype), dtype, {})
