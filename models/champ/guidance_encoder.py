"""Champ's guidance encoders (`models/guidance_encoder.py`) and their fusion.

A `GuidanceEncoder` is the pose-guider conv stack (`sd15.guidance_convs`) with six spatial self-attention
transformers built after its six convs (widths 16, 32, 32, 96, 96, 256; GroupNorm groups 1 after each
stride-1 conv, 32 after each stride-2 conv), of which the official forward runs only the last
(`attentions[-1]`, "FIXME: Temporarily only use the last attention"), then `conv_out`:

    maps [N, 3, H, W] in [0, 1] -> convs + SiLU -> attentions[-1] (per-frame self-attention over the
    H/8·W/8 tokens, 8 heads, no cross-attention) -> conv_out -> [N, 320, H/8, W/8]

The official class also builds a `guidance_attention` transformer that forward never calls and that the
released files do not hold; it is not built here. Fusion is a plain sum over the four encoders
(depth, normal, semantic_map, dwpose), each fed its own map; the sum goes into the denoising UNet after
`conv_in`, in both CFG branches.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MarionetteError
from ..sd15.blocks import DENOISING_LAYOUT, SpatialTransformer
from ..sd15.guidance_convs import EMBEDDING_CHANNELS, RELEASED_CHANNELS, GuidanceConvStack

GUIDANCE_TYPES = ("depth", "normal", "semantic_map", "dwpose")  # configs/inference/inference.yaml order
ATTENTION_HEADS = 8
ATTENTION_GROUPS = (1, 32)  # GroupNorm groups after the stride-1 conv, after the stride-2 conv


class GuidanceEncoder(GuidanceConvStack):
    """One Champ guidance encoder; keys as `guidance_encoder_<type>.pth` (130 tensors at full size)."""

    def __init__(self, block_out_channels: tuple[int, ...] = RELEASED_CHANNELS,
                 embedding_channels: int = EMBEDDING_CHANNELS, heads: int = ATTENTION_HEADS,
                 groups: tuple[int, int] = ATTENTION_GROUPS):
        self._heads, self._groups = int(heads), tuple(groups)
        super().__init__(block_out_channels, embedding_channels)

    def add_middle_layers(self, channels: tuple[int, ...]) -> None:
        self.attentions = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            for width, groups in ((c_in, self._groups[0]), (c_out, self._groups[1])):
                self.attentions.append(SpatialTransformer(width, self._heads, None, groups, DENOISING_LAYOUT))

    def middle(self, features: torch.Tensor) -> torch.Tensor:
        return self.attentions[-1](features)


class ChampGuidance(nn.Module):
    """The encoders of one Champ model by guidance type (`guidance_encoder_<type>`, any subset of
    GUIDANCE_TYPES); `forward(maps)` sums their features."""

    def __init__(self, encoders: dict[str, GuidanceEncoder]):
        super().__init__()
        unknown = [name for name in encoders if name not in GUIDANCE_TYPES]
        if unknown or not encoders:
            raise MarionetteError(f"Unknown or no Champ guidance types: {unknown or '(none)'}.",
                                  f"Use some of: {', '.join(GUIDANCE_TYPES)}.")
        self.encoders = nn.ModuleDict({name: encoders[name] for name in GUIDANCE_TYPES if name in encoders})

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.encoders.keys())

    def forward(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """maps: guidance type -> [N, 3, H, W] in [0, 1] (N frames, the same for every type) ->
        the summed features [N, 320, H/8, W/8]. Every loaded encoder needs its map; a type without an
        encoder is refused. Feeding fewer than Champ's four types is out of its training distribution."""
        missing = [name for name in self.types if name not in maps]
        extra = [name for name in maps if name not in self.types]
        if missing or extra:
            raise MarionetteError(
                f"Guidance maps {sorted(maps)} do not match the loaded encoders {list(self.types)}"
                + (f" (no map for {', '.join(missing)})" if missing else "")
                + (f" (no encoder for {', '.join(extra)})" if extra else "") + ".",
                "Connect one map per loaded guidance encoder, or load the encoders of the maps you have.")
        shapes = {tuple(maps[name].shape) for name in self.types}
        if len(shapes) != 1:
            raise MarionetteError(f"The guidance maps differ in shape: {sorted(shapes)}.",
                                  "Render every map for the same frames at the video size.")
        total = None
        for name in self.types:  # the official torch.stack(...).sum(0), in the yaml's order
            features = self.encoders[name](maps[name])
            total = features if total is None else total + features
        return total
