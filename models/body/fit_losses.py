"""Keypoint targets and loss terms of the body fit (SMPLify-X style, torch).

Every 2D keypoint of a PoseFrame person (OpenPose body 18, left hand 21, right hand 21, iBUG face 68)
is one target row; the body model's BodyOutput gives the matching 3D points in the same order.
Reprojection residuals are in pixels, robustified by Geman-McClure (GMoF) and divided by the
square of the person's 2D size, so the balance against the priors does not depend on the image
resolution or on how large the person appears.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..pose.types import BODY, FACE, HAND, PoseFrame

KEYPOINTS = BODY + 2 * HAND + FACE
HANDS = slice(BODY, BODY + 2 * HAND)
FACE_POINTS = slice(BODY + 2 * HAND, KEYPOINTS)
# OpenPose body indices
NOSE, NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 0, 1, 2, 5, 8, 11
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17
TORSO = (NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP)
HEAD = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)
# (left, right) pairs whose image order tells whether the person faces the camera, most reliable first
LEFT_RIGHT = ((L_SHOULDER, R_SHOULDER), (L_HIP, R_HIP), (L_EAR, R_EAR), (L_EYE, R_EYE))


@dataclass
class Targets:
    """Keypoints of T frames: pixels, confidences (0 = missing) and each frame's person size."""
    xy: np.ndarray       # [T, K, 2]
    conf: np.ndarray     # [T, K]
    usable: np.ndarray   # [T] bool: a person with enough body keypoints to fit

    def subset(self, index) -> "Targets":
        return Targets(self.xy[index], self.conf[index], self.usable[index])

    def person_size(self, floor: float) -> np.ndarray:
        """[T] diagonal (px) of the bbox of the visible body keypoints, at least `floor`."""
        out = np.full(len(self.xy), float(floor), np.float64)
        for i, (xy, conf) in enumerate(zip(self.xy[:, :BODY], self.conf[:, :BODY])):
            pts = xy[conf > 0]
            if len(pts) >= 2:
                out[i] = max(float(np.linalg.norm(pts.max(0) - pts.min(0))), floor)
        return out


def keypoint_targets(frames: list[PoseFrame], min_score: float, min_keypoints: int) -> Targets:
    """The first person of each frame as fit targets; keypoints scoring below `min_score` are missing."""
    t = len(frames)
    xy = np.zeros((t, KEYPOINTS, 2), np.float32)
    conf = np.zeros((t, KEYPOINTS), np.float32)
    for i, frame in enumerate(frames):
        if frame.num_people == 0:
            continue
        pts = np.concatenate([frame.body[0], frame.left_hand[0], frame.right_hand[0], frame.face[0]])
        score = np.nan_to_num(pts[:, 2], nan=0.0)
        keep = (score > 0) & (score >= min_score) & np.isfinite(pts[:, :2]).all(1)
        xy[i] = np.where(keep[:, None], pts[:, :2], 0.0)
        conf[i] = np.where(keep, np.clip(score, 0.0, 1.0), 0.0)
    usable = (conf[:, :BODY] > 0).sum(1) >= min_keypoints
    return Targets(xy, conf, usable)


def facing_camera(targets: Targets) -> np.ndarray:
    """[T] bool: the person's left side is on the image's right (they face the camera), judged from
    the first left/right pair seen in each frame (shoulders, hips, ears, eyes); True when none is."""
    out = np.ones(len(targets.xy), bool)
    for i in range(len(out)):
        votes = []
        for left, right in LEFT_RIGHT:
            if targets.conf[i, left] > 0 and targets.conf[i, right] > 0:
                votes.append(targets.xy[i, left, 0] - targets.xy[i, right, 0])
        if votes:
            out[i] = sum(votes[:2]) > 0
    return out


def model_keypoints(out) -> torch.Tensor:
    """BodyOutput → [B, K, 3] points in target order (zeros where the model has no face points)."""
    b = out.body18.shape[0]
    face = out.face if out.face is not None else out.body18.new_zeros(b, FACE, 3)
    return torch.cat([out.body18, out.hands.reshape(b, 2 * HAND, 3), face], dim=1)


def project(points: torch.Tensor, focal: float, width: int, height: int) -> torch.Tensor:
    """Camera-space [..., 3] → pixels [..., 2] (the same pinhole as Camera.project)."""
    z = points[..., 2:3].clamp(min=1e-3)
    centre = points.new_tensor([width / 2, height / 2])
    return points[..., :2] / z * focal + centre


def gmof(squared: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robustifier of squared residuals: ~r² for small r, saturating at sigma²."""
    s2 = sigma * sigma
    return s2 * squared / (squared + s2)


def reprojection(pixels: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, size: torch.Tensor,
                 sigma: float) -> torch.Tensor:
    """[B] sum over keypoints of weight · GMoF(|residual|²) / person size²."""
    squared = ((pixels - target) ** 2).sum(-1)
    return (weight * gmof(squared, sigma)).sum(-1) / size ** 2


def smoothness(values: torch.Tensor, previous: torch.Tensor | None, gaps: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between consecutive frames [B, D] (and the frame before the chunk,
    when given), each divided by the number of frames it spans."""
    seq = values if previous is None else torch.cat([previous[None], values])
    if len(seq) < 2:
        return values.new_zeros(())
    steps = gaps if previous is not None else gaps[1:]
    return (((seq[1:] - seq[:-1]) ** 2).sum(-1) / steps).sum()


def mean_error_px(pixels: np.ndarray, targets: Targets, part: slice = slice(0, BODY)) -> float:
    """Mean pixel distance over the visible keypoints of `part` (nan if none)."""
    vis = targets.conf[:, part] > 0
    if not vis.any():
        return float("nan")
    err = np.linalg.norm(pixels[:, part] - targets.xy[:, part], axis=-1)
    return float(err[vis].mean())
