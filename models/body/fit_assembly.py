"""Putting a fitted clip together: frames without a person filled in, and the fit's report.

The report tells the truth about the fit: reprojection errors per body part in pixels and as a
fraction of the person's size (the diagonal of the visible body keypoints' bbox, so the figures
mean the same at any resolution); hand and face figures only where the body model has those points
and the keypoints were there to fit; and the frames whose limbs (elbows, wrists, knees, ankles)
miss their keypoints by more than a threshold, named.
"""
from __future__ import annotations

import math

import numpy as np

from . import fit_losses as L

# OpenPose body parts for the report
PARTS = {"torso": (1, 2, 5, 8, 11), "head": (0, 14, 15, 16, 17), "arms": (3, 4, 6, 7), "legs": (9, 10, 12, 13)}
LIMB_POINTS = PARTS["arms"] + PARTS["legs"]


def frame_ranges(frames) -> str:
    """[1, 2, 3, 7, 9, 10] → '1-3, 7, 9-10'."""
    frames = sorted(int(f) for f in frames)
    out, start = [], None
    for i, f in enumerate(frames):
        if start is None:
            start = f
        if i + 1 == len(frames) or frames[i + 1] != f + 1:
            out.append(str(start) if start == f else f"{start}-{f}")
            start = None
    return ", ".join(out)


def _mean(err: np.ndarray, vis: np.ndarray) -> float | None:
    return float(err[vis].mean()) if vis.any() else None


def fit_report(pixels: np.ndarray, targets: L.Targets, size: np.ndarray, frame_ids: np.ndarray,
               has_face: bool, limb_threshold: float) -> dict:
    """Diagnostics of fitted frames: pixels [N, K, 2] against their targets, person sizes [N] (px),
    the clip's frame numbers of those frames [N]. Keys: reprojection_px (body), reprojection_px_hands
    / _face (only when there is something to measure), reprojection_parts {part: {"px", "relative"}},
    frames_limbs_off (clip frame numbers) and limbs_off_note."""
    err = np.linalg.norm(pixels - targets.xy, axis=-1)                   # [N, K] px
    vis = targets.conf > 0
    rel = err / np.maximum(size, 1e-6)[:, None]
    parts = {name: list(ids) for name, ids in PARTS.items()}
    parts["hands"] = list(range(L.HANDS.start, L.HANDS.stop))
    if has_face:
        parts["face"] = list(range(L.FACE_POINTS.start, L.FACE_POINTS.stop))
    report = {}
    for name, ids in parts.items():
        px = _mean(err[:, ids], vis[:, ids])
        if px is not None:
            report[name] = {"px": px, "relative": _mean(rel[:, ids], vis[:, ids])}
    out = {"reprojection_px": _mean(err[:, :L.BODY], vis[:, :L.BODY]) if vis[:, :L.BODY].any() else math.nan,
           "reprojection_relative": _mean(rel[:, :L.BODY], vis[:, :L.BODY]) if vis[:, :L.BODY].any() else math.nan,
           "reprojection_parts": report}
    if "hands" in report:
        out["reprojection_px_hands"] = report["hands"]["px"]
    if "face" in report:
        out["reprojection_px_face"] = report["face"]["px"]
    limbs = np.where(vis[:, list(LIMB_POINTS)], rel[:, list(LIMB_POINTS)], 0.0).max(1) if len(rel) else np.zeros(0)
    off = [int(f) for f in np.asarray(frame_ids)[limbs > limb_threshold]]
    out["limb_error_threshold"] = float(limb_threshold)
    out["frames_limbs_off"] = off
    out["limbs_off_note"] = (f"limbs off by more than {100 * limb_threshold:.0f}% of the body size in "
                             f"{len(off)} frame(s): {frame_ranges(off)}") if off else ""
    return out


def fill_missing(pose: np.ndarray, translation: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames without a person: linear interpolation between the nearest fitted frames (the global
    orientation through quaternions), the nearest fitted frame at the clip's ends."""
    pose, translation = pose.copy(), translation.copy()
    good = np.flatnonzero(ok)
    for i in np.flatnonzero(~ok):
        after = good[good > i]
        before = good[good < i]
        if not len(before) or not len(after):
            j = after[0] if len(after) else before[-1]
            pose[i], translation[i] = pose[j], translation[j]
            continue
        a, b = before[-1], after[0]
        w = (i - a) / (b - a)
        pose[i] = (1 - w) * pose[a] + w * pose[b]
        pose[i, :3] = blend_orientation(pose[a, :3], pose[b, :3], w)
        translation[i] = (1 - w) * translation[a] + w * translation[b]
    return pose, translation


def blend_orientation(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """Normalised quaternion blend of two axis-angle rotations, returned as the axis-angle nearest `a`."""
    qa, qb = quaternion(a), quaternion(b)
    if np.dot(qa, qb) < 0:
        qb = -qb
    q = (1 - w) * qa + w * qb
    q /= np.linalg.norm(q)
    angle = 2 * math.atan2(np.linalg.norm(q[1:]), q[0])
    axis = q[1:] / max(np.linalg.norm(q[1:]), 1e-12)
    aa = axis * angle
    alt = aa - axis * 2 * math.pi      # the same rotation the other way round
    return (aa if np.linalg.norm(aa - a) <= np.linalg.norm(alt - a) else alt).astype(np.float32)


def quaternion(aa: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2)], np.asarray(aa, np.float64) / angle * math.sin(angle / 2)])
