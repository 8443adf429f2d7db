"""A 3D prior against the depth ambiguity of 2D keypoints: an arm pointing at the camera and one
pointing away project alike, and the pose prior alone prefers the smaller rotation (often the wrong
one). BlazePose's landmark model also estimates 3D "world" landmarks (metres around the hip
centre, camera axes: x right, y down, z away from the camera); their limbs' depth directions tell
the two apart. The fit adds, per limb, the squared difference between the fitted limb's and the
prior's depth direction (the z part of the unit vector from the upper joint to the lower one),
weighted by the prior's confidence; x and y stay with the reprojection term.

Layout of a prior: [T, 18, 4] per frame, OpenPose-18 order, (x, y, z, score); score 0 = absent
(fit_losses.world_prior builds it from PoseFrame.world and the 2D scores).
"""
from __future__ import annotations

import numpy as np
import torch

from ..pose.types import BODY

# (upper, lower) OpenPose-18 joints: upper arms, forearms, thighs, shins. The torso's turn is left
# to the orientation pass (the shoulder and hip lines here made Human3.6M's PA-MPJPE worse).
LIMBS = ((2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (11, 12), (12, 13))


def _depth_direction(points: torch.Tensor) -> torch.Tensor:
    """[..., 18, 3] → [..., L] z part of each limb's unit direction (upper → lower joint)."""
    upper = points[..., [a for a, _ in LIMBS], :]
    lower = points[..., [b for _, b in LIMBS], :]
    d = lower - upper
    return d[..., 2] / d.norm(dim=-1).clamp(min=1e-6)


def limb_depth(points_cam: torch.Tensor, prior: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """[B] Σ over limbs of confidence · max(0, |fitted − prior depth direction| − margin)²;
    points_cam [B, 18, 3] (camera space), prior [B, 18, 4]. The margin leaves the prior's small
    errors alone: it is there to settle towards-or-away, not to redraw the pose."""
    conf = torch.minimum(prior[..., [a for a, _ in LIMBS], 3], prior[..., [b for _, b in LIMBS], 3])
    diff = _depth_direction(points_cam[..., :BODY, :]) - _depth_direction(prior[..., :3])
    return (conf * torch.relu(diff.abs() - margin) ** 2).sum(-1)


def limb_depth_directions(points: np.ndarray) -> np.ndarray:
    """numpy twin of the fitted limbs' depth directions, [..., 18, 3] → [..., L] (for reports)."""
    return _depth_direction(torch.as_tensor(np.asarray(points, np.float32))).numpy()
