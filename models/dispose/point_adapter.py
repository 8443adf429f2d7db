"""The keypoint-correspondence adapter of DisPose's ControlNet (`point_adapter.*` in DisPose.pth).

Each reference keypoint k carries a feature vector (DisPose: the SD1.5 DIFT feature of the reference image at
that keypoint, 1280 channels). For every window frame, that vector is written into a grid at 1/16 of the
video size, at the cell where keypoint k lies in THAT frame's pose, so the reference appearance is carried to
where the body part moves. Vectors landing in the same cell are averaged. One MLP per ControlNet down block
(1280 -> 128 -> block width, SiLU) maps the occupied cells; empty cells stay zero. Each level is then resized
bilinearly to that block's output size and re-masked with the nearest-resized occupancy, and the ControlNet
adds it to its hidden state after that down block.

Placement rules, as in the official adapter (so the released weights see what they were trained on):
- a keypoint is placed when it is visible in the target frame and none of its coordinates is negative;
  visibility of the reference keypoint does not matter (an invisible one places a zero vector, and the
  MLP's biases still produce a feature there);
- the cell is (floor(x * w16), floor(y * h16)) clamped to the grid, with x, y normalised by the video size.

The result depends on the poses and the reference only, not on the timestep or the noisy latents, so it can
be computed once per window and reused at every denoising step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError

POINT_EMBEDDING_CHANNELS = 1280  # DIFT feature width (SD1.5 up_blocks[1])
POINT_HIDDEN_CHANNELS = 128


class PointMLP(nn.Module):
    """Linear -> SiLU -> Linear, named `mlp.0` / `mlp.2` as in the released file."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = POINT_HIDDEN_CHANNELS):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.SiLU(),
                                 nn.Linear(hidden_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PointAdapter(nn.Module):
    """Reference keypoint features + per-frame target keypoints -> one feature map per ControlNet down block.

    `channels[i]` is the width of down block i's output and `strides[i]` its downscale from the video
    (SVD-xt: 320/640/1280/1280 at 16/32/64/64). The placement grid is at `strides[0]`."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...],
                 embedding_channels: int = POINT_EMBEDDING_CHANNELS, hidden_channels: int = POINT_HIDDEN_CHANNELS):
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("PointAdapter needs one stride per level")
        self.model_list = nn.ModuleList(PointMLP(embedding_channels, c, hidden_channels) for c in channels)
        self.strides = tuple(strides)
        self.embedding_channels = embedding_channels

    def level_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(h, w) of each level's map for a video of `image_size` = (H, W)."""
        height, width = image_size
        return [(height // s, width // s) for s in self.strides]

    def forward(self, point_embeddings: torch.Tensor, points: torch.Tensor, visible: torch.Tensor,
                image_size: tuple[int, int]) -> list[torch.Tensor]:
        """`point_embeddings` [B, K, C]: feature of each reference keypoint (zeros where it was not detected);
        `points` [F, K, 2] (or [B, F, K, 2]): each window frame's keypoints (x / W, y / H), frame 0 being the
        reference slot's pose; `visible` [F, K] (or [B, F, K]) bool; `image_size` (H, W) of the video.
        Returns one tensor [B, F, channels[i], H / strides[i], W / strides[i]] per level."""
        embeddings, points, visible = _check_inputs(point_embeddings, points, visible, self.embedding_channels)
        batch, frames, count = visible.shape
        grid_h, grid_w = self.level_sizes(image_size)[0]
        if grid_h < 1 or grid_w < 1:
            raise MarionetteError(f"A {image_size[1]}x{image_size[0]} video is too small for DisPose's keypoint "
                                  f"grid (1/{self.strides[0]} of the size).", "Use a video of at least 64x64.")
        cell_sums, counts = _scatter_to_cells(embeddings, points, visible, grid_h, grid_w)
        occupied = counts > 0
        mean = cell_sums[occupied] / counts[occupied, None]
        mask = occupied.reshape(batch * frames, 1, grid_h, grid_w).to(embeddings.dtype)
        levels = []
        for mlp, size in zip(self.model_list, self.level_sizes(image_size)):
            features = mean.new_zeros(cell_sums.shape[0], mlp.mlp[2].out_features)
            features[occupied] = mlp(mean)
            features = features.reshape(batch * frames, grid_h, grid_w, -1).permute(0, 3, 1, 2)
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
            features = features * F.interpolate(mask, size=size, mode="nearest")
            levels.append(features.reshape(batch, frames, *features.shape[1:]))
        return levels


def _check_inputs(embeddings: torch.Tensor, points: torch.Tensor, visible: torch.Tensor, channels: int):
    if embeddings.ndim != 3 or embeddings.shape[-1] != channels:
        raise MarionetteError(
            f"Reference keypoint features must be [batch, keypoints, {channels}]; got {tuple(embeddings.shape)}.",
            "Pass one DIFT feature vector per reference keypoint (zeros for undetected ones).")
    batch, count = embeddings.shape[:2]
    points = torch.as_tensor(points)
    visible = torch.as_tensor(visible, device=points.device)
    if points.ndim == 3:
        points = points.unsqueeze(0).expand(batch, *points.shape)
    if visible.ndim == 2:
        visible = visible.unsqueeze(0).expand(batch, *visible.shape)
    if points.ndim != 4 or points.shape[0] != batch or points.shape[2:] != (count, 2) \
            or visible.shape != points.shape[:3]:
        raise MarionetteError(
            f"Keypoints must be [frames, {count}, 2] with visibility [frames, {count}] (one row per reference "
            f"keypoint); got {tuple(points.shape)} and {tuple(visible.shape)}.",
            "Pass each window frame's keypoints in the reference keypoints' order, normalised by the video size.")
    return embeddings, points.to(embeddings.device), visible.to(embeddings.device, torch.bool)


def _scatter_to_cells(embeddings: torch.Tensor, points: torch.Tensor, visible: torch.Tensor,
                      grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the placed embeddings per grid cell [B*F*h*w, C] and how many landed there [B*F*h*w]."""
    batch, frames, count = visible.shape
    points = points.double()
    placed = visible & (points >= 0).all(-1)
    col = (points[..., 0] * grid_w).floor().clamp(0, grid_w - 1).long()
    row = (points[..., 1] * grid_h).floor().clamp(0, grid_h - 1).long()
    plane = torch.arange(batch * frames, device=points.device).reshape(batch, frames, 1) * (grid_h * grid_w)
    cell = (plane + row * grid_w + col)[placed]
    source = embeddings.unsqueeze(1).expand(batch, frames, count, -1)[placed]
    cells = batch * frames * grid_h * grid_w
    sums = embeddings.new_zeros(cells, embeddings.shape[-1]).index_add_(0, cell, source)
    counts = embeddings.new_zeros(cells).index_add_(0, cell, torch.ones_like(cell, dtype=embeddings.dtype))
    return sums, counts
