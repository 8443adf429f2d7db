"""Rotated regions of interest, the MediaPipe way, in frame pixels.

MediaPipe describes every crop as a rotated rectangle: a centre, a width and height, and a
rotation (radians, positive turns the crop's "up" towards the frame's right, y pointing down).
The landmark models see the rectangle resampled into a square tensor; their outputs are mapped
back with the same affine. All coordinates here are continuous pixel coordinates: the pixel with
index i covers [i, i + 1), so its centre is i + 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Rect:
    cx: float
    cy: float
    width: float
    height: float
    angle: float = 0.0  # radians

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.cx, self.cy], np.float64)


def normalize_radians(angle: float) -> float:
    """Wraps an angle into [-pi, pi)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def rotation_towards(start: np.ndarray, end: np.ndarray, target_degrees: float) -> float:
    """Rotation that turns the vector start→end to `target_degrees` (90 = straight up)."""
    dx, dy = float(end[0] - start[0]), float(end[1] - start[1])
    return normalize_radians(math.radians(target_degrees) - math.atan2(-dy, dx))


def alignment_rect(start: np.ndarray, end: np.ndarray, target_degrees: float) -> Rect:
    """Square centred on `start` with half-side |end − start| (MediaPipe's alignment points)."""
    side = 2.0 * float(np.hypot(*(np.asarray(end, float) - np.asarray(start, float))))
    return Rect(float(start[0]), float(start[1]), side, side, rotation_towards(start, end, target_degrees))


def bbox_rect(points: np.ndarray, angle: float = 0.0) -> Rect:
    """Axis-aligned bounding box of the points, carrying a rotation for the later transform."""
    lo, hi = points.min(0), points.max(0)
    return Rect(float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2, float(hi[0] - lo[0]), float(hi[1] - lo[1]), angle)


def rotated_bbox_rect(points: np.ndarray, angle: float) -> Rect:
    """Tight box of the points in a frame rotated by `angle` (as MediaPipe fits hand landmarks)."""
    c, s = math.cos(angle), math.sin(angle)
    axis_centre = (points.min(0) + points.max(0)) / 2
    local = (points - axis_centre) @ np.array([[c, -s], [s, c]])  # rows: R(-angle) applied
    lo, hi = local.min(0), local.max(0)
    mid = (lo + hi) / 2
    centre = axis_centre + np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1]])
    return Rect(float(centre[0]), float(centre[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]), angle)


def transform_rect(rect: Rect, scale: float, shift_x: float = 0.0, shift_y: float = 0.0) -> Rect:
    """RectTransformation with square_long: shift in the rect's own axes, square, then scale."""
    c, s = math.cos(rect.angle), math.sin(rect.angle)
    dx = rect.width * shift_x * c - rect.height * shift_y * s
    dy = rect.width * shift_x * s + rect.height * shift_y * c
    side = max(rect.width, rect.height) * scale
    return Rect(rect.cx + dx, rect.cy + dy, side, side, rect.angle)


def crop_to_frame_matrix(rect: Rect, size: int) -> np.ndarray:
    """2×3 affine taking continuous crop coordinates (0..size) to frame coordinates."""
    c, s = math.cos(rect.angle), math.sin(rect.angle)
    k_x, k_y = rect.width / size, rect.height / size
    lin = np.array([[c * k_x, -s * k_y], [s * k_x, c * k_y]])
    offset = rect.centre - lin @ np.array([size / 2, size / 2])
    return np.concatenate([lin, offset[:, None]], 1)


def frame_to_crop_matrix(rect: Rect, size: int) -> np.ndarray:
    fwd = crop_to_frame_matrix(rect, size)
    inv = np.linalg.inv(fwd[:, :2])
    return np.concatenate([inv, (-inv @ fwd[:, 2])[:, None]], 1)


def project_to_frame(points: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    """[N, 2] crop coordinates → [N, 2] frame coordinates."""
    m = crop_to_frame_matrix(rect, size)
    return points[:, :2] @ m[:, :2].T + m[:, 2]


def project_to_crop(points: np.ndarray, rect: Rect, size: int) -> np.ndarray:
    m = frame_to_crop_matrix(rect, size)
    return points[:, :2] @ m[:, :2].T + m[:, 2]


def crop(image: np.ndarray, rect: Rect, size: int, value_range: tuple[float, float] = (0.0, 1.0),
         border: str = "replicate") -> np.ndarray:
    """Resamples the rect of a uint8 RGB image into a [1, size, size, 3] float32 tensor."""
    m = frame_to_crop_matrix(rect, size)
    # cv2 works on pixel indices (centre at i), our matrices on continuous coordinates (centre at i + 0.5)
    idx = m.copy()
    idx[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    out = cv2.warpAffine(image, idx, (size, size), flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=(0, 0, 0))
    lo, hi = value_range
    return (out.astype(np.float32) * ((hi - lo) / 255.0) + lo)[None]


def letterbox_rect(height: int, width: int) -> Rect:
    """The whole frame padded to a centred square (keep_aspect_ratio for the detectors)."""
    side = float(max(height, width))
    return Rect(width / 2.0, height / 2.0, side, side, 0.0)


def inside_frame(point: np.ndarray, height: int, width: int) -> bool:
    """True when a point (continuous pixel coordinates) lies inside the frame."""
    return bool(0.0 <= point[0] <= width and 0.0 <= point[1] <= height)


def _in_rotated_frame(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(-angle), math.sin(-angle)
    return np.stack([points[..., 0] * c - points[..., 1] * s, points[..., 0] * s + points[..., 1] * c], -1)


def tracking_consistent(previous: Rect, landmarks: np.ndarray, recrop: Rect, rotation_deg: float,
                        translation: float, scale: float, margin: float) -> bool:
    """RoiTracking's test: keep the previous ROI while it agrees with this frame's recrop ROI."""
    diff = math.degrees(normalize_radians(previous.angle - recrop.angle))
    (px, py), (qx, qy) = _in_rotated_frame(np.array([previous.centre, recrop.centre]), recrop.angle)
    if (abs(diff) > rotation_deg or abs(px - qx) > recrop.width * translation
            or abs(py - qy) > recrop.height * translation
            or abs(previous.width - recrop.width) > recrop.width * scale
            or abs(previous.height - recrop.height) > recrop.height * scale):
        return False
    local = _in_rotated_frame(landmarks, recrop.angle)
    half = np.array([recrop.width, recrop.height]) * (1.0 + margin) / 2.0
    return bool(np.all(np.abs(local - np.array([qx, qy])) < half))
