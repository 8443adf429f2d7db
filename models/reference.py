"""Reference-image sizing: size presets and the ways to fit a photo to them.

Every output side is a multiple of 64, which the SVD/SD VAEs (÷8) and UNets (÷8 again) need.
`fit_reference` returns the fitted image and the Affine that maps original pixel coordinates
(continuous convention, see vision.image) to output coordinates, so masks, boxes and keypoints
can follow the image: `transform.apply(xy)`, `transform.apply_box(box)`, `transform.warp(mask, size)`.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import MarionetteError
from .vision.image import Affine, check_rgb, letterbox, resize

PRESETS: dict[str, tuple[int, int]] = {   # name → (width, height)
    "512x512": (512, 512),
    "512x768": (512, 768),
    "768x512": (768, 512),
    "576x1024": (576, 1024),   # MimicMotion / StableAnimator portrait default
    "1024x576": (1024, 576),
}
# "auto" follows MimicMotion's preprocess: portrait (h > w) → 576×1024, otherwise 1024×576.
PRESET_NAMES = tuple(PRESETS) + ("auto", "custom")
FIT_MODES = ("crop", "crop person", "pad", "stretch", "keep aspect")
MULTIPLE = 64
HEADROOM = 0.05  # fraction of the crop height kept above the head when a person is taller than the crop


def round_to_multiple(value: float, multiple: int = MULTIPLE) -> int:
    """Nearest multiple (halves round up), never below one multiple."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def target_size(preset: str, image_size: tuple[int, int] | None = None,
                custom: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) for a preset name; image_size=(w, h) is needed for "auto", custom for "custom"."""
    if preset in PRESETS:
        return PRESETS[preset]
    if preset == "auto":
        if image_size is None:
            raise MarionetteError('The "auto" size needs the image size.', "Pass image_size=(width, height).")
        return (576, 1024) if image_size[1] > image_size[0] else (1024, 576)
    if preset == "custom":
        if custom is None:
            raise MarionetteError('The "custom" size needs a width and a height.', "Set width and height.")
        return round_to_multiple(custom[0]), round_to_multiple(custom[1])
    raise MarionetteError(f"Unknown size preset {preset!r}.", f"Use one of {', '.join(PRESET_NAMES)}.")


def fit_reference(image: np.ndarray, size: str | tuple[int, int] = "576x1024", mode: str = "crop",
                  mask: np.ndarray | None = None, pad_colour: tuple[int, int, int] = (0, 0, 0),
                  custom: tuple[int, int] | None = None) -> tuple[np.ndarray, Affine]:
    """Fits a uint8 RGB [H, W, 3] image to a preset or (width, height); returns (image, transform).

    Modes:
    - "crop": resize to cover the target, then centre-crop (MimicMotion's preprocess, exactly:
      ceil on the free side, torchvision's centre-crop rounding).
    - "crop person": like "crop", but the crop is centred on the person mask's bounding box
      (mask [H, W], > 0.5 = person). A person taller than the crop keeps the head (the crop
      starts just above it). An empty mask falls back to the centre.
    - "pad": keep the aspect, letterbox with `pad_colour`.
    - "stretch": resize to the target, aspect not kept.
    - "keep aspect": the longest side becomes the target's longest side, then each side is
      rounded to a multiple of 64 (a slight stretch of at most 32 px per side).
    A (width, height) tuple or "custom" size is rounded to multiples of 64 (minimum 64).
    """
    image = check_rgb(image, "reference image")
    h, w = image.shape[:2]
    if isinstance(size, str):
        tw, th = target_size(size, (w, h), custom)
    else:
        tw, th = target_size("custom", custom=tuple(size))
    if mode == "crop":
        return cover_crop(image, (tw, th))
    if mode == "crop person":
        if mask is None:
            raise MarionetteError('The "crop person" mode needs a person mask.', "Pass the segmentation mask.")
        return cover_crop(image, (tw, th), person_box(mask, (w, h)))
    if mode == "pad":
        return letterbox(image, (tw, th), pad_colour)
    if mode == "stretch":
        return resize(image, (tw, th)), Affine.scale_shift(tw / w, th / h)
    if mode == "keep aspect":
        s = max(tw, th) / max(w, h)
        ow, oh = round_to_multiple(w * s), round_to_multiple(h * s)
        return resize(image, (ow, oh)), Affine.scale_shift(ow / w, oh / h)
    raise MarionetteError(f"Unknown fit mode {mode!r}.", f"Use one of {', '.join(FIT_MODES)}.")


def cover_size(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the smallest resize covering the target; MimicMotion's arithmetic."""
    w, h = image_size
    tw, th = target
    h_w_ratio = float(h) / float(w)
    if h_w_ratio < th / tw:
        return math.ceil(th / h_w_ratio), th
    return tw, math.ceil(tw * h_w_ratio)


def cover_crop(image: np.ndarray, target: tuple[int, int],
               box: np.ndarray | None = None) -> tuple[np.ndarray, Affine]:
    """Resize to cover `target`=(w, h) and crop; centred, or on `box` (x0, y0, x1, y1) if given."""
    h, w = image.shape[:2]
    tw, th = target
    rw, rh = cover_size((w, h), target)
    scaled = Affine.scale_shift(rw / w, rh / h)
    if box is None:
        # torchvision's center_crop offsets (Python round: halves go to even)
        left, top = int(round((rw - tw) / 2.0)), int(round((rh - th) / 2.0))
    else:
        bx0, by0, bx1, by1 = scaled.apply_box(box)
        left = _crop_start(bx0, bx1, tw, rw, keep_start=False)
        top = _crop_start(by0, by1, th, rh, keep_start=True)
    out = resize(image, (rw, rh))[top:top + th, left:left + tw]
    return np.ascontiguousarray(out), scaled.then(Affine.scale_shift(1.0, 1.0, -left, -top))


def _crop_start(lo: float, hi: float, crop: int, length: int, keep_start: bool) -> int:
    """Start of a `crop`-long window in [0, length] holding the span lo..hi, centred if it fits."""
    if hi - lo > crop and keep_start:
        start = lo - HEADROOM * crop
    else:
        start = (lo + hi) / 2.0 - crop / 2.0
    return int(round(min(max(start, 0.0), length - crop)))


def person_box(mask: np.ndarray, image_size: tuple[int, int] | None = None,
               threshold: float = 0.5) -> np.ndarray | None:
    """Bounding box x0, y0, x1, y1 (continuous pixels) of mask > threshold, or None if empty."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise MarionetteError(f"The person mask must be [H,W]; got shape {m.shape}.", "Pass a single mask.")
    if image_size is not None and (m.shape[1], m.shape[0]) != tuple(image_size):
        raise MarionetteError(f"The mask is {m.shape[1]}×{m.shape[0]} but the image is "
                              f"{image_size[0]}×{image_size[1]}.", "Use a mask made from this image.")
    if m.dtype == np.uint8:
        m = m.astype(np.float32) / 255.0
    ys, xs = np.nonzero(m > threshold)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
