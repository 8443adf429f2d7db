"""Moore-AnimateAnyone's PoseGuider (`src/models/pose_guider.py`), as `pose2vid.py` builds it for the
released `pose_guider.pth`: `PoseGuider(320, block_out_channels=(16, 32, 96, 256))` — the class default
(16, 32, 64, 128) has the same 16 tensor names with other shapes and does not fit the file.

    skeleton frames [N, 3, H, W] in [0, 1] -> conv_in + SiLU -> 3 x (conv + SiLU, stride-2 conv + SiLU)
    -> conv_out (zero-initialised when trained from scratch) -> [N, 320, H/8, W/8]

The features go into the denoising UNet right after `conv_in`, in both CFG branches.
"""
from __future__ import annotations

from ..sd15.guidance_convs import EMBEDDING_CHANNELS, RELEASED_CHANNELS, GuidanceConvStack


class PoseGuider(GuidanceConvStack):
    """The released PoseGuider (16 tensors: conv_in, blocks.0-5, conv_out)."""

    def __init__(self, block_out_channels: tuple[int, ...] = RELEASED_CHANNELS,
                 embedding_channels: int = EMBEDDING_CHANNELS):
        super().__init__(block_out_channels, embedding_channels)
