"""Image normalisation and geometry shared by the reference, segmentation and detector code.

Conventions
- An image here is uint8 RGB [H, W, 3] unless a function says otherwise.
- Coordinates are continuous pixels: the image spans [0, W] × [0, H] and pixel (i, j) has its
  centre at (i + 0.5, j + 0.5). Under this convention a resize by s maps x to x·s exactly, and the
  image corners map to the output corners.
- Resampling: INTER_AREA when shrinking (it averages, so no aliasing), INTER_CUBIC when enlarging
  (sharper than linear; LANCZOS rings more on hard edges such as clothing outlines).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import MarionetteError

DEFAULT_BACKGROUND = (255, 255, 255)


# ---------------------------------------------------------------- batch conversion

def _as_numpy(images) -> np.ndarray:
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # torch.Tensor without importing torch
        images = images.detach().cpu()
        if str(images.dtype) in ("torch.bfloat16", "torch.float16"):
            images = images.float()
        images = images.numpy()
    return np.asarray(images)


def _as_bhwc(a: np.ndarray) -> np.ndarray:
    """[B,H,W,C], [H,W,C] (C in 1/3/4) or [B,H,W] (grayscale batch) → [B,H,W,C]."""
    if a.ndim == 4:
        return a
    if a.ndim == 3:
        return a[None] if a.shape[-1] in (1, 3, 4) else a[..., None]
    if a.ndim == 2:
        return a[None, ..., None]
    raise MarionetteError(f"Expected an image batch [B,H,W,C], [H,W,C] or [B,H,W]; got shape {a.shape}.",
                          "Connect an IMAGE output (for example from Load Image).")


def _to_unit_float(a: np.ndarray) -> np.ndarray:
    """Any supported dtype → float32 0..1."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise MarionetteError("The image contains NaN or infinite values.",
                                  "Check the node that produced it; an upstream step failed numerically.")
        return np.clip(a, 0.0, 1.0)
    raise MarionetteError(f"Unsupported image dtype {a.dtype}.", "Pass float images in 0..1 or uint8.")


def to_rgb_uint8(images, background: tuple[int, int, int] | None = DEFAULT_BACKGROUND) -> np.ndarray:
    """ComfyUI IMAGE (numpy or torch, float 0..1 or uint8) → uint8 RGB [B, H, W, 3].

    Accepts [B,H,W,C] with C in {1, 3, 4}, a single [H,W,C] image or a grayscale batch [B,H,W]
    (a 3-D array whose last axis is 1, 3 or 4 is read as one [H,W,C] image).
    Grayscale is repeated to three channels. RGBA is alpha-composited over `background`
    (white by default, so transparent cut-outs read as a plain studio backdrop); pass
    background=None to drop the alpha channel instead.
    """
    a = _as_bhwc(_as_numpy(images))
    b, h, w, c = a.shape
    if b == 0:
        raise MarionetteError("The image batch is empty.", "Connect an image with at least one frame.")
    if h == 0 or w == 0:
        raise MarionetteError(f"The image has zero size ({w}×{h}).", "Load a real image.")
    if c not in (1, 3, 4):
        raise MarionetteError(f"Images must have 1, 3 or 4 channels; got {c}.", "Convert the image to RGB.")
    if a.dtype == np.uint8 and c == 3:
        return np.ascontiguousarray(a)
    f = _to_unit_float(a)
    if c == 1:
        f = np.repeat(f, 3, axis=-1)
    elif c == 4:
        rgb, alpha = f[..., :3], f[..., 3:]
        f = rgb if background is None else rgb * alpha + (np.asarray(background, np.float32) / 255.0) * (1 - alpha)
    return np.round(f * 255.0).astype(np.uint8)


def to_float_image(images: np.ndarray) -> np.ndarray:
    """uint8 image(s) → float32 in 0..1, same shape (the ComfyUI IMAGE value range)."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise MarionetteError(f"Expected uint8 pixels, got {a.dtype}.", "Convert with to_rgb_uint8 first.")
    return a.astype(np.float32) / 255.0


def check_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validates one uint8 RGB [H, W, 3] image and returns it contiguous."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise MarionetteError(f"The {what} must be uint8 RGB [H,W,3]; got {a.dtype} {a.shape}.",
                              "Convert it with to_rgb_uint8(...)[0].")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise MarionetteError(f"The {what} has zero size.", "Load a real image.")
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Affine:
    """A 2×3 affine map of continuous pixel coordinates (x, y) → (x', y')."""
    matrix: np.ndarray

    @staticmethod
    def scale_shift(sx: float, sy: float, tx: float = 0.0, ty: float = 0.0) -> "Affine":
        return Affine(np.array([[sx, 0.0, tx], [0.0, sy, ty]], np.float64))

    def _full(self) -> np.ndarray:
        return np.vstack([self.matrix, [0.0, 0.0, 1.0]])

    def then(self, other: "Affine") -> "Affine":
        """The map that applies self first, then other."""
        return Affine((other._full() @ self._full())[:2])

    def inverse(self) -> "Affine":
        return Affine(np.linalg.inv(self._full())[:2])

    def apply(self, points) -> np.ndarray:
        """[..., 2] xy → [..., 2] xy."""
        p = np.asarray(points, np.float64)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]

    def apply_box(self, box) -> np.ndarray:
        """x0, y0, x1, y1 → the axis-aligned box around the mapped corners."""
        x0, y0, x1, y1 = np.asarray(box, np.float64)
        c = self.apply(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
        return np.concatenate([c.min(0), c.max(0)])

    def warp(self, array: np.ndarray, size: tuple[int, int], border_value: float = 0.0,
             interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Resamples an image or mask into a `size`=(width, height) canvas through this map.

        cv2 puts pixel centres at integers, so the map is conjugated by the half-pixel shift.
        """
        half = Affine.scale_shift(1.0, 1.0, 0.5, 0.5)
        m = half.then(self).then(half.inverse()).matrix
        return cv2.warpAffine(np.ascontiguousarray(array), m.astype(np.float64), (int(size[0]), int(size[1])),
                              flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes to `size`=(width, height): INTER_AREA to shrink, INTER_CUBIC to enlarge.

    Float arrays (masks) are clipped back to their input range, because cubic overshoots.
    """
    h, w = image.shape[:2]
    tw, th = int(size[0]), int(size[1])
    if (tw, th) == (w, h):
        return image.copy()
    shrink = tw <= w and th <= h
    out = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if not shrink and np.issubdtype(image.dtype, np.floating):
        out = np.clip(out, float(image.min()), float(image.max()))
    return out


def letterbox_transform(src: tuple[int, int], dst: tuple[int, int]) -> Affine:
    """The map that fits a src=(w, h) image inside dst=(w, h), aspect kept, centred."""
    s = min(dst[0] / src[0], dst[1] / src[1])
    return Affine.scale_shift(s, s, (dst[0] - src[0] * s) / 2.0, (dst[1] - src[1] * s) / 2.0)


def letterbox(image: np.ndarray, size: tuple[int, int], colour=(0, 0, 0)) -> tuple[np.ndarray, Affine]:
    """Fits the image inside `size`=(w, h) keeping its aspect, centred, the rest filled with `colour`.

    Returns the canvas and the map from image coordinates to canvas coordinates. The image is
    resized to whole pixels and pasted at a whole-pixel offset, and the map says exactly that.
    """
    h, w = image.shape[:2]
    tw, th = int(size[0]), int(size[1])
    s = min(tw / w, th / h)
    rw, rh = min(tw, max(1, round(w * s))), min(th, max(1, round(h * s)))
    x0, y0 = (tw - rw) // 2, (th - rh) // 2
    canvas = np.empty((th, tw) + image.shape[2:], image.dtype)
    canvas[...] = colour
    canvas[y0:y0 + rh, x0:x0 + rw] = resize(image, (rw, rh))
    return canvas, Affine.scale_shift(rw / w, rh / h, x0, y0)
