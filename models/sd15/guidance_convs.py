"""The conv stack Moore's PoseGuider and Champ's GuidanceEncoders share (diffusers'
`ControlNetConditioningEmbedding` layout without its prefix).

    conv_in 3x3 (3 -> c0) + SiLU
    for each (c_i -> c_{i+1}): blocks.2i 3x3 (c_i -> c_i) + SiLU, blocks.2i+1 3x3 stride 2 (c_i -> c_{i+1}) + SiLU
    [Champ only: one spatial self-attention at c_last, see models.champ]
    conv_out 3x3 (c_last -> 320), no activation (zero-initialised by the official code)

Input: RGB maps in [0, 1] (the official `VaeImageProcessor(do_normalize=False)`), [N, 3, H, W] with H and W
multiples of 8; output [N, 320, H/8, W/8], added to the denoising UNet right after `conv_in`.
Released channels: (16, 32, 96, 256) for both families (Moore's class default (16, 32, 64, 128) is not
what its file holds).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.images import image_batch
from ..errors import MarionetteError

RELEASED_CHANNELS = (16, 32, 96, 256)
EMBEDDING_CHANNELS = 320


class GuidanceConvStack(nn.Module):
    """conv_in, blocks, [middle layers of a subclass], conv_out — registered in the official order."""

    def __init__(self, block_out_channels: tuple[int, ...] = RELEASED_CHANNELS,
                 embedding_channels: int = EMBEDDING_CHANNELS, input_channels: int = 3):
        super().__init__()
        channels = tuple(int(c) for c in block_out_channels)
        self.block_out_channels, self.input_channels = channels, int(input_channels)
        self.conv_in = nn.Conv2d(input_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.add_middle_layers(channels)
        self.conv_out = nn.Conv2d(channels[-1], embedding_channels, 3, padding=1)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def add_middle_layers(self, channels: tuple[int, ...]) -> None:
        """Subclasses register layers that run between the conv stack and `conv_out` here."""

    def middle(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """maps [N, 3, H, W] in [0, 1] -> features [N, 320, H/8, W/8]."""
        if maps.ndim != 4 or maps.shape[1] != self.input_channels:
            raise MarionetteError(f"Guidance maps must be [frames, {self.input_channels}, H, W]; got "
                                  f"{tuple(maps.shape)}.", "Convert an IMAGE batch with maps_to_input().")
        if maps.shape[-2] % self.downscale or maps.shape[-1] % self.downscale:
            raise MarionetteError(f"Guidance maps are {maps.shape[-1]}x{maps.shape[-2]}; both sides must be "
                                  f"multiples of {self.downscale} to match the latent grid.",
                                  "Render or resize the maps to the video size (a multiple of 64 is safest).")
        x = F.silu(self.conv_in(maps))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(self.middle(x))


def maps_to_input(images_0_1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ComfyUI IMAGE batch [F, H, W, 3] in [0, 1] -> encoder input [F, 3, H, W] in [0, 1] (no normalisation,
    as the official pipelines feed `pixels / 255`)."""
    images = image_batch(images_0_1, "Guidance images", "rendered maps")
    return images.to(dtype).permute(0, 3, 1, 2).contiguous()
