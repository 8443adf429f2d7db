"""Keypoint targets and loss terms of the body fit (SMPLify-X style, torch).

Every 2D keypoint of a PoseFrame person (OpenPose body 18, left hand 21, right hand 21, iBUG face 68)
is one target row; the body model's BodyOutput gives the matching 3D points in the same order.
Reprojection residuals are divided by the person's 2D size (the diagonal of the visible body
keypoints' bbox) and robustified by Geman-McClure (GMoF) at a scale that is a fraction of that size,
so neither the balance against the priors nor which points count as outliers depends on the image
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


@dataclass
class Targets:
    """Keypoints of T frames: pixels, confidences (0 = missing) and each frame's person size."""
    xy: np.ndarray       # [T, K, 2]
    conf: np.ndarray     # [T, K]
    usable: np.ndarray   # [T] bool: a person with enough body keypoints to fit
    world: np.ndarray | None = None  # [T, 18, 4] 3D keypoints (camera axes, metres) + score, or None

    def subset(self, index) -> "Targets":
        return Targets(self.xy[index], self.conf[index], self.usable[index],
                       None if self.world is None else self.world[index])

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
    return Targets(xy, conf, usable, world_prior(frames, conf[:, :BODY]))


def world_prior(frames: list[PoseFrame], body_conf: np.ndarray) -> np.ndarray | None:
    """[T, 18, 4] the first person's 3D body keypoints (PoseFrame.world: metres, camera axes) with
    their 2D scores (0 where missing or not finite), or None when no frame has any."""
    if not any(f.world is not None and f.num_people for f in frames):
        return None
    out = np.zeros((len(frames), BODY, 4), np.float32)
    for i, frame in enumerate(frames):
        if frame.world is None or frame.num_people == 0:
            continue
        pts = np.asarray(frame.world[0], np.float32)
        ok = np.isfinite(pts).all(1)
        out[i, ok, :3] = pts[ok]
        out[i, ok, 3] = body_conf[i, ok]
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
    """[B] sum over keypoints of weight · GMoF(|residual / person size|², sigma): residuals and the
    robust scale `sigma` are fractions of the person's size [B]."""
    squared = ((pixels - target) ** 2).sum(-1) / size[:, None] ** 2
    return (weight * gmof(squared, sigma)).sum(-1)


def smoothness(values: torch.Tensor, previous: torch.Tensor | None, gaps: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between consecutive frames [B, D] (and the frame before the chunk,
    when given), each divided by the number of frames it spans."""
    seq = values if previous is None else torch.cat([previous[None], values])
    if len(seq) < 2:
        return values.new_zeros(())
    steps = gaps if previous is not None else gaps[1:]
    return (((seq[1:] - seq[:-1]) ** 2).sum(-1) / steps).sum()
