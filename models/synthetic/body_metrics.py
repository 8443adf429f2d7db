"""Ground-truth comparisons for the 3D body stage: the torso's facing, a joint's depth.

All inputs are OpenPose-18 joints in OpenCV camera space (x right, y down, z forward, metres).
"""
from __future__ import annotations

import numpy as np

NOSE, NECK, R_SHOULDER, R_WRIST, L_SHOULDER, R_HIP, L_HIP = 0, 1, 2, 4, 5, 8, 11


def torso_facing(joints: np.ndarray) -> np.ndarray:
    """[..., 3] unit direction the torso faces: (left − right) × up, from shoulders and hips."""
    j = np.asarray(joints, np.float64)
    across = (j[..., L_SHOULDER, :] - j[..., R_SHOULDER, :]) + (j[..., L_HIP, :] - j[..., R_HIP, :])
    up = (j[..., L_SHOULDER, :] + j[..., R_SHOULDER, :]) - (j[..., L_HIP, :] + j[..., R_HIP, :])
    f = np.cross(across, up)
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def torso_yaw(joints: np.ndarray) -> np.ndarray:
    """[...] degrees the torso is turned from facing the camera, about the camera's vertical,
    in (-180, 180]: 0 = chest to the camera, ±180 = back to the camera."""
    f = torso_facing(joints)
    return np.degrees(np.arctan2(f[..., 0], -f[..., 2]))


def angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a − b in degrees, wrapped into (-180, 180]."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64) + 180.0) % 360.0 - 180.0
    return np.where(d == -180.0, 180.0, d)


def yaw_report(fitted: np.ndarray, truth: np.ndarray) -> dict:
    """Facing of fitted vs true joints over a clip [T, 18, 3]: mean and worst yaw error, the largest
    frame-to-frame change of the fitted yaw beyond the true change ('extra jump'), and the frames
    fitted facing the wrong way (chest shown for a back view or the reverse: error > 90°)."""
    fy, ty = torso_yaw(fitted), torso_yaw(truth)
    err = np.abs(angle_difference(fy, ty))
    jump = np.abs(angle_difference(np.diff(fy), np.diff(ty))) if len(fy) > 1 else np.zeros(0)
    return {"mean_error_deg": float(err.mean()), "max_error_deg": float(err.max()),
            "max_extra_jump_deg": float(jump.max()) if len(jump) else 0.0,
            "wrong_way_frames": [int(i) for i in np.flatnonzero(err > 90.0)]}


def wrist_depth_error(fitted: np.ndarray, truth: np.ndarray, wrist: int = R_WRIST) -> np.ndarray:
    """[T] |error| (metres) of the wrist's depth relative to the neck, fitted vs true."""
    f = np.asarray(fitted, np.float64)
    t = np.asarray(truth, np.float64)
    return np.abs((f[:, wrist, 2] - f[:, NECK, 2]) - (t[:, wrist, 2] - t[:, NECK, 2]))
