"""The motion-field encoder of DisPose's ControlNet (`controlnet_cond_embedding.*` in DisPose.pth).

Two branches of the same shape, one for the dense motion field (CMP output, `*_flow`) and one for the
sparse, blurred keypoint trajectories (`*_traj`). Each branch: a 3x3 conv 2 -> c0, then per channel step a
3x3 conv keeping the width and a stride-2 3x3 conv widening it, SiLU after every conv, and a zero-initialised
3x3 conv to the ControlNet width. With the released channels (16, 32, 96, 256) that is three stride-2 convs,
so a full-resolution field lands on the latent grid (H/8, W/8). The two branch outputs are summed and mixed by
`conv_final` (3x3, not zero-initialised); the result is added to the ControlNet's `conv_in` output.

Both fields are given for the window's frames after the reference slot, in pixel units at the video size;
the reference slot gets an all-zero field (it does not move relative to itself).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError

FLOW_CHANNELS = (16, 32, 96, 256)  # the released widths (DisPose `from_unet` defaults)
BRANCHES = ("flow", "traj")  # dense CMP field, sparse trajectory field


def _conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=stride)


class MotionFieldEmbedding(nn.Module):
    """Dense + sparse motion fields [B, F-1, 2, H, W] -> [B*F, out_channels, H/8, W/8]."""

    def __init__(self, out_channels: int = 320, channels: tuple[int, ...] = FLOW_CHANNELS, field_channels: int = 2):
        super().__init__()
        self.channels = tuple(channels)
        for branch in BRANCHES:
            blocks = nn.ModuleList()
            for c_in, c_out in zip(self.channels[:-1], self.channels[1:]):
                blocks.append(_conv3(c_in, c_in))
                blocks.append(_conv3(c_in, c_out, stride=2))
            conv_out = _conv3(self.channels[-1], out_channels)
            # Zero output conv: an untrained ControlNet starts as "no motion information".
            nn.init.zeros_(conv_out.weight)
            nn.init.zeros_(conv_out.bias)
            setattr(self, f"conv_in_{branch}", _conv3(field_channels, self.channels[0]))
            setattr(self, f"blocks_{branch}", blocks)
            setattr(self, f"conv_out_{branch}", conv_out)
        self.conv_final = _conv3(out_channels, out_channels)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def _branch(self, branch: str, field: torch.Tensor) -> torch.Tensor:
        h = F.silu(getattr(self, f"conv_in_{branch}")(field))
        for conv in getattr(self, f"blocks_{branch}"):
            h = F.silu(conv(h))
        return getattr(self, f"conv_out_{branch}")(h)

    def forward(self, dense_flow: torch.Tensor, sparse_flow: torch.Tensor) -> torch.Tensor:
        """`dense_flow`, `sparse_flow`: [B, F-1, 2, H, W] displacements (x, y) in pixels for the F-1 frames
        after the reference slot. Returns the embedding of all F frames, frame-major per video: [B*F, C, H/8, W/8]."""
        out = None
        for branch, field in zip(BRANCHES, (dense_flow, sparse_flow)):
            if field.ndim != 5 or field.shape[2] != 2:
                raise MarionetteError(
                    f"A DisPose motion field must be [batch, frames - 1, 2, H, W]; got {tuple(field.shape)}.",
                    "Pass the (dx, dy) pixel displacements of every window frame after the reference slot.")
            # The reference slot (frame 0) gets a zero field, prepended before flattening frames into the batch.
            field = torch.cat([torch.zeros_like(field[:, :1]), field], dim=1).flatten(0, 1)
            embedding = self._branch(branch, field.to(self.conv_final.weight.dtype))
            out = embedding if out is None else out + embedding
        return self.conv_final(out)
