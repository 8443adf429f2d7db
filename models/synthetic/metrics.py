"""PCK (percentage of correct keypoints) of predicted OpenPose-18 bodies against ground truth.

A GT joint counts only where its visibility (third column) is > 0. A predicted joint is correct
when it is present (score > 0) and within alpha * reference length of the GT, where the reference
length is per frame: the diagonal of the bbox of the frame's visible GT joints ("bbox"), the
mid-shoulder to mid-hip distance ("torso"), or given explicitly as an array of T lengths.
"""
from __future__ import annotations

import numpy as np

from ..errors import MarionetteError
from ..pose.types import BODY, PoseFrame

# Nose, neck, shoulders, elbows, wrists, hips, knees, ankles: the joints every backend must get.
BODY_JOINTS = tuple(range(14))
R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 2, 5, 8, 11


def _people(pred) -> list[np.ndarray]:
    """Predictions -> per frame an array [P, 18, 3] (P may be 0)."""
    if isinstance(pred, PoseFrame):
        pred = [pred]
    if isinstance(pred, np.ndarray):
        a = np.asarray(pred, np.float64)
        if a.ndim == 3 and a.shape[1:] == (BODY, 3):
            return [f[None] for f in a]
        if a.ndim == 4 and a.shape[2:] == (BODY, 3):
            return list(a)
        raise MarionetteError(f"Prediction array has shape {a.shape}.", "Pass [T, 18, 3] or [T, P, 18, 3].")
    out = []
    for f in pred:
        if isinstance(f, PoseFrame):
            out.append(np.asarray(f.body, np.float64))
        else:
            a = np.asarray(f, np.float64)
            out.append(a.reshape(-1, BODY, 3))
    return out


def _ground_truth(gt) -> np.ndarray:
    """Ground truth -> [T, 18, 3] (x, y, visibility); accepts a SyntheticClip, PoseFrames or an array."""
    if hasattr(gt, "joints2d"):
        gt = gt.joints2d
    if isinstance(gt, PoseFrame):
        gt = [gt]
    if isinstance(gt, (list, tuple)) and gt and isinstance(gt[0], PoseFrame):
        rows = []
        for f in gt:
            rows.append(f.body[0] if f.num_people else np.zeros((BODY, 3)))
        gt = np.stack(rows)
    a = np.asarray(gt, np.float64)
    if a.ndim != 3 or a.shape[1:] != (BODY, 3):
        raise MarionetteError(f"Ground truth has shape {a.shape}.", "Pass [T, 18, 3] (x, y, visibility).")
    return a


def reference_lengths(gt: np.ndarray, ref) -> np.ndarray:
    """Per-frame normalising length [T] in pixels (nan where it cannot be measured)."""
    t = len(gt)
    if isinstance(ref, str):
        vis = gt[..., 2] > 0
        out = np.full(t, np.nan)
        for i in range(t):
            if ref == "bbox":
                pts = gt[i, vis[i], :2]
                if len(pts) >= 2:
                    out[i] = float(np.linalg.norm(pts.max(0) - pts.min(0)))
            elif ref == "torso":
                if vis[i, [R_SHOULDER, L_SHOULDER, R_HIP, L_HIP]].all():
                    shoulders = (gt[i, R_SHOULDER, :2] + gt[i, L_SHOULDER, :2]) / 2
                    hips = (gt[i, R_HIP, :2] + gt[i, L_HIP, :2]) / 2
                    out[i] = float(np.linalg.norm(shoulders - hips))
            else:
                raise MarionetteError(f"Unknown PCK reference {ref!r}.", "Use 'bbox', 'torso' or an array of T lengths.")
        return out
    out = np.asarray(ref, np.float64).reshape(-1)
    if len(out) != t:
        raise MarionetteError(f"{len(out)} reference lengths for {t} frames.", "Pass one length per frame.")
    return out


def normalized_errors(pred, gt, ref="bbox") -> np.ndarray:
    """[T, 18] error / reference length: nan where the GT joint is not visible (or no reference),
    inf where the prediction is missing. With several predicted people, the one closest to the
    GT in a frame is used."""
    g = _ground_truth(gt)
    people = _people(pred)
    if len(people) != len(g):
        raise MarionetteError(f"{len(people)} predicted frames against {len(g)} ground-truth frames.",
                              "Predict every frame of the clip.")
    lengths = reference_lengths(g, ref)
    out = np.full(g.shape[:2], np.nan)
    for i, (cands, truth) in enumerate(zip(people, g)):
        vis = truth[:, 2] > 0
        if not vis.any() or not np.isfinite(lengths[i]) or lengths[i] <= 0:
            continue
        best = np.full(BODY, np.inf)
        for person in cands:
            err = np.linalg.norm(person[:, :2] - truth[:, :2], axis=1) / lengths[i]
            err[person[:, 2] <= 0] = np.inf
            if _score(err[vis]) < _score(best[vis]):
                best = err
        out[i, vis] = best[vis]
    return out


def _score(err: np.ndarray) -> float:
    """Ranking of candidate people: missing joints cost 1 reference length each."""
    return float(np.minimum(err, 1.0).sum())


def pck_per_joint(pred, gt, alpha: float = 0.1, ref="bbox", joints=BODY_JOINTS) -> np.ndarray:
    """PCK@alpha of each joint in `joints` (nan where that joint is never visible in the GT)."""
    err = normalized_errors(pred, gt, ref)[:, list(joints)]
    counted = ~np.isnan(err)
    hits = (np.nan_to_num(err, nan=np.inf) <= alpha).sum(0)
    n = counted.sum(0)
    return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def pck(pred, gt, alpha: float = 0.1, ref="bbox", joints=BODY_JOINTS) -> float:
    """PCK@alpha over all GT-visible joints in `joints` of all frames (nan if none is visible)."""
    err = normalized_errors(pred, gt, ref)[:, list(joints)]
    counted = ~np.isnan(err)
    if not counted.any():
        return float("nan")
    return float((err[counted] <= alpha).mean())


def procrustes_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean point distance after the best similarity transform (rotation, scale, shift) of `pred`
    onto `true` ([N, 3] each), in their units: MPJPE-PA for one frame of joints."""
    p0, t0 = pred - pred.mean(0), true - true.mean(0)
    u, s, vt = np.linalg.svd(p0.T @ t0)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    aligned = (s * np.diag(d)).sum() / (p0 ** 2).sum() * p0 @ (u @ d @ vt)
    return float(np.linalg.norm(aligned - t0, axis=1).mean())
