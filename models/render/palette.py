"""How each guidance map turns rendered buffers into bytes (Champ's encodings, plus our dense render).

Every function takes per-pixel float buffers of one frame and returns uint8 RGB [H, W, 3] with a
black background. Floats become bytes the way Blender writes an 8-bit PNG: round(255 · value),
clamped to 0..255.
"""
from __future__ import annotations

import numpy as np

# Champ's semantic palette: SMPL part k (SMPL_PARTS order) is cv2.applyColorMap(uint8(10·k),
# COLORMAP_VIRIDIS), flipped from BGR to RGB. Listed here so the bytes never depend on OpenCV.
SEMANTIC_PALETTE = np.array([
    (68, 1, 84), (71, 16, 99), (72, 29, 111), (71, 42, 122), (69, 55, 129), (65, 66, 135),
    (61, 78, 138), (56, 89, 140), (51, 99, 141), (46, 109, 142), (42, 118, 142), (39, 128, 142),
    (35, 137, 142), (32, 146, 140), (30, 156, 137), (33, 165, 133), (40, 174, 128), (53, 183, 121),
    (70, 192, 111), (90, 200, 100), (112, 207, 87), (137, 213, 72), (162, 218, 55), (189, 223, 38),
], dtype=np.uint8)
NUM_PARTS = len(SEMANTIC_PALETTE)

# Dense render (VividPose's "rendering map", whose type the paper leaves open; our choice): a flat
# grey body lit by a point light at the camera, Lambert, linear, no texture.
DENSE_AMBIENT = 0.2
DENSE_DIFFUSE = 0.75


def to_byte(value: np.ndarray) -> np.ndarray:
    """0..1 floats → uint8 with round-half-up, as Blender's float → byte conversion."""
    return np.clip(np.floor(np.asarray(value, np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    """[H, W] uint8 → [H, W, 3], the grey replicated (Champ loads its BW PNGs with .convert('RGB'))."""
    return np.repeat(grey[..., None], 3, axis=-1)


def encode_depth(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Champ's depth: 255·clamp(1 − (d − d_min)/(d_max − d_min)) with min and max over this frame's
    body pixels, so the nearest body point is white, the farthest 0, the background 0.
    A body at one single depth is all white (Blender's Normalize then scales by 0)."""
    out = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return grey_rgb(out)
    d = depth[mask].astype(np.float64)
    lo, hi = d.min(), d.max()
    span = hi - lo
    scaled = (d - lo) / span if span > 1e-12 else np.zeros_like(d)
    out[mask] = to_byte(1.0 - scaled)
    return grey_rgb(out)


def encode_depth_window(depth: np.ndarray, mask: np.ndarray, near: float, far: float) -> np.ndarray:
    """Depth in a fixed window: 255·clamp(1 − (d − near)/(far − near)) on body pixels, background 0.
    With one window for a whole clip (see guidance.clip_depth_windows) the same depth keeps the
    same grey from frame to frame; Champ's per-frame min-max does not (encode_depth)."""
    out = np.zeros(mask.shape, np.uint8)
    if mask.any():
        d = depth[mask].astype(np.float64)
        out[mask] = to_byte(1.0 - (d - near) / max(far - near, 1e-12))
    return grey_rgb(out)


def encode_normal(normal_gl: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Champ's normal map: camera-space unit normal, OpenGL axes (x right, y up, z towards the
    viewer), stored as (n + 1)/2 per channel; a surface facing the camera is (128, 128, 255)."""
    out = np.zeros(mask.shape + (3,), np.uint8)
    out[mask] = to_byte(0.5 * normal_gl[mask] + 0.5)
    return out


def encode_semantic(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Part label per pixel → Champ's palette colour; nothing blends, so every body pixel is one of
    the 24 colours."""
    out = np.zeros(mask.shape + (3,), np.uint8)
    out[mask] = SEMANTIC_PALETTE[np.clip(labels[mask], 0, NUM_PARTS - 1)]
    return out


def encode_mask(mask: np.ndarray) -> np.ndarray:
    """Body pixels 255, background 0, grey replicated ×3 like the other maps."""
    return grey_rgb(np.where(mask, 255, 0).astype(np.uint8))


def encode_dense(normal_gl: np.ndarray, to_camera: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flat grey shaded by a head-light: ambient + diffuse · max(0, n · direction to the camera).
    `to_camera` [N, 3] holds those directions for the body pixels (mask order)."""
    out = np.zeros(mask.shape, np.uint8)
    lambert = np.clip(np.sum(normal_gl[mask] * to_camera, axis=-1), 0.0, 1.0)
    out[mask] = to_byte(DENSE_AMBIENT + DENSE_DIFFUSE * lambert)
    return grey_rgb(out)
