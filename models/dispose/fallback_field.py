"""FALLBACK dense motion field that needs no download: keypoint-driven interpolation inside the
person mask, standing in for DisPose's CMP field when `ckpt_iter_42000.pth.tar` is not installed.

This is NOT what DisPose was run with. It gives a field with the same layout and conventions as the
CMP field (reference -> frame t, [N, 2, H, W], dx/dy in pixels of the generation size, defined on
the reference image), built from the same keypoint displacements the CMP receives:

    f_t(x) = m(x) * sum_k w_k(x) v_k,   w_k = softmax_k( -|x - p_k|^2 / (2 sigma^2) - log(|x - p_k|^2 + eps) )

with p_k the reference keypoints visible in the reference and in frame t, v_k = their displacement
reference -> frame t and m the reference person mask (0 outside). The log term is inverse-square
distance weighting (Shepard), which makes the field pass through v_k at p_k with zero slope there;
the Gaussian term keeps each keypoint's influence local (sigma ~ body size). The result is smooth,
bounded by the keypoint displacements, and 0 wherever the mask is 0. Unlike CMP it does not follow
image edges (a hand in front of the torso moves the torso too) and does not saturate at +-49.5 px of
the 384 grid.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import MarionetteError
from ..pose.types import VISIBLE, PoseFrame
from .motion_field import body_tracks, require_keypoints

EPS = 1e-6  # px^2: the keypoint's own weight at distance 0 dominates its neighbours' by ~1e6 / d^2
SIGMA_FRACTION, MIN_SIGMA = 0.15, 8.0  # default sigma: this fraction of the keypoints' box diagonal


def interpolation_weights(anchors: torch.Tensor, query: torch.Tensor, sigma: float) -> torch.Tensor:
    """[M, K] weights (rows sum to 1) of anchors [K, 2] at query points [M, 2] (pixels): the
    Gaussian-localised inverse-square weighting of this module."""
    d2 = (query[:, :1] - anchors[:, 0]) ** 2 + (query[:, 1:] - anchors[:, 1]) ** 2
    return torch.softmax(-d2 / (2 * sigma ** 2) - torch.log(d2 + EPS), dim=1)


def interpolate_displacements(anchors: torch.Tensor, vectors: torch.Tensor, query: torch.Tensor,
                              sigma: float) -> torch.Tensor:
    """Displacements [M, 2] at query points [M, 2] from anchors [K, 2] carrying vectors [K, 2]."""
    return interpolation_weights(anchors, query, sigma) @ vectors


def _mask_tensor(mask) -> torch.Tensor:
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if m.dim() == 3 and len(m) == 1:
        m = m[0]
    if m.dim() != 2:
        raise MarionetteError(f"The person mask has shape {tuple(m.shape)}, not [H, W].",
                              "Pass one mask of the reference image.")
    if m.dtype == torch.bool:
        return m.float()
    if m.dtype == torch.uint8:
        return m.float() / 255.0
    return m.float().clamp(0, 1)


def default_sigma(reference_xy: np.ndarray) -> float:
    """SIGMA_FRACTION of the diagonal of the visible reference keypoints' box, at least MIN_SIGMA px."""
    if len(reference_xy) < 2:
        return MIN_SIGMA
    diagonal = float(np.hypot(*(reference_xy.max(0) - reference_xy.min(0))))
    return max(MIN_SIGMA, SIGMA_FRACTION * diagonal)


def dense_motion_field_fallback(frames: Sequence[PoseFrame], mask=None, height: int | None = None,
                                width: int | None = None, *, sigma: float | None = None, person: int = 0,
                                min_score: float = VISIBLE, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FALLBACK dense field [N, 2, H, W] (reference -> frame t) without CMP: the displacements of the
    reference keypoints interpolated over the reference person `mask` ([H, W]: bool, uint8 0..255 or
    float 0..1; None = the whole canvas), 0 outside it. Size: the mask's, else height x width, else the
    poses' canvas. A frame without any keypoint visible in it and in the reference gets a zero map."""
    m = None if mask is None else _mask_tensor(mask)
    if m is not None:
        if (height and height != m.shape[0]) or (width and width != m.shape[1]):
            raise MarionetteError(
                f"The person mask is {m.shape[1]}x{m.shape[0]} but the motion field is {width}x{height}.",
                "Use the mask of the reference image at the generation size.")
        height, width = m.shape
    tracks = body_tracks(frames, height, width, person=person, min_score=min_score)
    n = len(tracks.xy) - 1
    usable = tracks.pairs_visible(np.zeros(n, int), np.arange(1, n + 1))
    require_keypoints(usable, "reference-to-frame pair")
    h, w = tracks.height, tracks.width
    if sigma is None:
        sigma = default_sigma(tracks.xy[0][tracks.visible[0]])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    inside = None
    if m is not None:
        inside = m.reshape(-1) > 0
        grid, strength = grid[inside], m.reshape(-1)[inside, None]
    out = torch.zeros(n, 2, h * w, dtype=dtype)
    for signature in {u.tobytes() for u in usable if u.any()}:
        keys = np.frombuffer(signature, bool)
        anchors = torch.from_numpy(tracks.xy[0][keys]).float()
        weights = interpolation_weights(anchors, grid, sigma)  # shared by all frames with these keypoints
        if inside is not None:
            weights = weights * strength
        for t in np.nonzero((usable == keys).all(1))[0]:
            vectors = torch.from_numpy(tracks.xy[t + 1][keys] - tracks.xy[0][keys]).float()
            field = (weights @ vectors).T.to(dtype)
            if inside is None:
                out[t] = field
            else:
                out[t][:, inside] = field
    return out.reshape(n, 2, h, w)
