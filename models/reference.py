"""Reference-image sizing: size presets and the ways to fit a photo to them.

Every output side is a multiple of 64, which the SVD/SD VAEs (÷8) and UNets (÷8 again) need.
`fit_reference` returns the fitted image and the Affine that maps original pixel coordinates
(continuous convention, see vision.image) to output coordinates, so masks, boxes and keypoints
can follow the image: `transform.apply(xy)`, `transform.apply_box(box)`, `transform.warp(mask, size)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import MarionetteError
from .pose.types import OPENPOSE_BODY, VISIBLE
from .vision.face_detect import (Face, FaceDetector, FaceRegion, choose_face, expand_face_box, face_box_and_mask,
                                 face_box_from_body)
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
                  custom: tuple[int, int] | None = None, box=None, head=None) -> tuple[np.ndarray, Affine]:
    """Fits a uint8 RGB [H, W, 3] image to a preset or (width, height); returns (image, transform).

    Modes:
    - "crop": resize to cover the target, then centre-crop (MimicMotion's preprocess, exactly:
      ceil on the free side, torchvision's centre-crop rounding).
    - "crop person": like "crop", but the crop is centred on the person: `box` when given (one
      x0, y0, x1, y1 or several from the most to the least to keep, see `cover_crop`; `head` is the
      head's box), else the person mask's bounding box (mask [H, W], > 0.5 = person). A person that
      fits the crop is kept whole; one taller than the crop keeps the head (the crop starts just
      above it). An empty mask falls back to the centre.
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
        if box is not None:
            return cover_crop(image, (tw, th), box, head)
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


def cover_crop(image: np.ndarray, target: tuple[int, int], box=None, head=None) -> tuple[np.ndarray, Affine]:
    """Resize to cover `target`=(w, h) and crop; centred, or framed on `box`.

    `box` is x0, y0, x1, y1, or several such boxes [k, 4] from the most to the least to keep (say the
    person with hands and feet, then the keypoints alone): on each axis the first that fits the crop
    is centred. When none fits, the crop keeps the top (the head, with HEADROOM above it) and is
    centred across on `head` (x0, y0, x1, y1) if given, else on the first box.
    """
    h, w = image.shape[:2]
    tw, th = target
    rw, rh = cover_size((w, h), target)
    scaled = Affine.scale_shift(rw / w, rh / h)
    if box is None:
        # torchvision's center_crop offsets (Python round: halves go to even)
        left, top = int(round((rw - tw) / 2.0)), int(round((rh - th) / 2.0))
    else:
        boxes = np.array([scaled.apply_box(b) for b in np.asarray(box, np.float64).reshape(-1, 4)])
        last = boxes[0] if head is None else scaled.apply_box(head)
        left = _crop_start(boxes[:, [0, 2]], tw, rw, (last[0] + last[2]) / 2.0 - tw / 2.0)
        top = _crop_start(boxes[:, [1, 3]], th, rh, min(boxes[0, 1], last[1]) - HEADROOM * th)
    out = resize(image, (rw, rh))[top:top + th, left:left + tw]
    return np.ascontiguousarray(out), scaled.then(Affine.scale_shift(1.0, 1.0, -left, -top))


def _crop_start(spans: np.ndarray, crop: int, length: int, otherwise: float) -> int:
    """Start of a `crop`-long window in [0, length] centred on the first span [lo, hi] it holds, else at
    `otherwise`."""
    start = otherwise
    for lo, hi in spans:
        if hi - lo <= crop:
            start = (lo + hi) / 2.0 - crop / 2.0
            break
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


# ---------------------------------------------------------------- the whole reference: image, person, face

HAND_REACH = 0.6    # fingertips lie about this far past the wrist, in forearm lengths (hand ≈ 0.75, often curled)
FOOT_REACH = 0.15   # soles lie about this far below the ankle, in shin lengths
SUBJECT_MARGIN = 0.15  # mask pixels this far (× the keypoint box's longer side) around the keypoints are the person's
MIN_BODY_POINTS = 4    # visible body keypoints needed to frame the person by them
LIMB_ENDS = (("right hand", 3, 4, HAND_REACH), ("left hand", 6, 7, HAND_REACH),    # (part, joint, end, reach)
             ("right foot", 9, 10, FOOT_REACH), ("left foot", 12, 13, FOOT_REACH))


@dataclass
class Reference:
    image: np.ndarray          # fitted uint8 RGB [h, w, 3]
    transform: Affine          # original pixels → fitted pixels
    person_mask: np.ndarray    # float32 [h, w] in 0..1
    face: FaceRegion           # expanded face box and soft mask on the fitted image
    face_box: np.ndarray | None  # the brow-to-chin face box in fitted pixels (not clipped), None if no face
    face_score: float          # detector score of the chosen face (0 when placed from the body keypoints)
    body: np.ndarray | None    # OpenPose-18 [18, 3] of the person in fitted pixels, None if nobody was found
    cut: tuple[str, ...]       # keypoints and body ends that the fit put off the canvas
    person_kept: float         # fraction of the person mask's area that is on the canvas

    def note(self) -> str:
        """One line for the status: what the fit cut away, or an empty string."""
        if not self.cut:
            return ""
        return (f"the fit cuts off: {', '.join(self.cut)} ({100 * (1 - self.person_kept):.0f}% of the person); "
                "the \"pad\" or \"keep_aspect\" fit, or a size with the photo's orientation, keeps the whole body")


def body_ends(body: np.ndarray | None, face_box=None) -> dict[str, np.ndarray]:
    """Points a crop must keep besides the keypoints: fingertips and soles extrapolated along forearm and
    shin, and the top of the head (of the expanded face box)."""
    out = {}
    if body is not None:
        b = np.asarray(body, np.float64)
        for name, joint, end, reach in LIMB_ENDS:
            if b[joint, 2] > VISIBLE and b[end, 2] > VISIBLE:
                out[name] = b[end, :2] + reach * (b[end, :2] - b[joint, :2])
    if face_box is not None:
        head = expand_face_box(face_box)
        out["top of the head"] = np.array([(head[0] + head[2]) / 2, head[1]])
    return out


def keypoint_box(body: np.ndarray | None, extra=()) -> np.ndarray | None:
    """x0, y0, x1, y1 of the visible keypoints and `extra` points; None below MIN_BODY_POINTS keypoints."""
    points = [] if body is None else [p[:2] for p in np.asarray(body, np.float64) if p[2] > VISIBLE]
    if len(points) < MIN_BODY_POINTS:
        return None
    points = np.array(points + [np.asarray(e, np.float64) for e in extra])
    return np.concatenate([points.min(0), points.max(0)])


def subject_box(mask: np.ndarray, body: np.ndarray | None = None, ends=()) -> np.ndarray | None:
    """x0, y0, x1, y1 of the person to keep: the visible keypoints and `ends`, grown by the person mask's
    pixels near them (hair, clothes, shoes), so another person or a stray blob elsewhere in the mask does
    not pull the crop; the mask's own box when the body has fewer than MIN_BODY_POINTS keypoints."""
    m = np.asarray(mask)
    m = m[..., 0] if m.ndim == 3 else m
    box = keypoint_box(body, ends)
    if box is None:
        return person_box(m)
    lo, hi = box[:2], box[2:]
    grow = SUBJECT_MARGIN * float(max(hi - lo))
    h, w = m.shape
    x0, y0 = (int(np.clip(np.floor(v - grow), 0, n)) for v, n in zip(lo, (w, h)))
    x1, y1 = (int(np.clip(np.ceil(v + grow), 0, n)) for v, n in zip(hi, (w, h)))
    near = person_box(m[y0:y1, x0:x1]) if x1 > x0 and y1 > y0 else None
    if near is not None:
        lo = np.minimum(lo, near[:2] + (x0, y0))
        hi = np.maximum(hi, near[2:] + (x0, y0))
    return np.concatenate([lo, hi])


def cut_parts(body: np.ndarray | None, ends: dict, transform: Affine, size: tuple[int, int]) -> tuple[str, ...]:
    """Names of the visible keypoints and body ends that `transform` moves off a canvas of `size`."""
    w, h = size
    off = lambda xy: not (0 <= xy[0] <= w and 0 <= xy[1] <= h)  # noqa: E731
    names = []
    if body is not None:
        b = np.asarray(body, np.float64)
        names += [OPENPOSE_BODY[i] for i in range(len(b)) if b[i, 2] > VISIBLE and off(transform.apply(b[i, :2]))]
    names += [name for name, xy in ends.items() if off(transform.apply(xy))]
    return tuple(names)


def prepare_reference(picture: np.ndarray, size: str | tuple[int, int], mode: str,
                      segmenter: Callable[[np.ndarray], np.ndarray], face_detector: FaceDetector,
                      body_estimator: Callable[[np.ndarray], np.ndarray | None] | None = None,
                      custom: tuple[int, int] | None = None) -> Reference:
    """The reference photo fitted to a size (see `fit_reference`), with its person mask, face and report.

    Everything is found on the original photo and carried by the fit's transform, so the face box is
    the same face for every size and mode: BlazeFace candidates (whole image, around the head, top of
    the person) chosen by confidence and agreement with the body's head keypoints
    (`body_estimator(picture)` → OpenPose-18 [18, 3] or None). "crop person" keeps the keypoints, the
    hands, the feet and the top of the head when the crop can hold them, else the keypoints and the
    head top, else the head; `cut` names what it (or any other crop) leaves out.
    """
    picture = check_rgb(picture, "reference image")
    mask = segmenter(picture)
    body = None if body_estimator is None else body_estimator(picture)
    face = choose_face(face_detector.candidates(picture, person_box(mask), body), body)
    face_box = face.box if face is not None else None if body is None else face_box_from_body(body)
    ends = body_ends(body, face_box)
    head = None if face_box is None else expand_face_box(face_box)
    head_corners = [] if head is None else [head[:2], head[2:]]
    frame = subject_box(mask, body, list(ends.values()) + head_corners)
    core = keypoint_box(body, head_corners)
    frames = None if frame is None else np.array([frame] if core is None else [frame, core])
    fitted, transform = fit_reference(picture, size, mode, mask=mask, custom=custom, box=frames, head=head)
    h, w = fitted.shape[:2]
    person = np.clip(transform.warp(mask, (w, h)), 0.0, 1.0)
    body_out = None
    if body is not None:
        body_out = np.asarray(body, np.float32).copy()
        body_out[:, :2] = transform.apply(body_out[:, :2].astype(np.float64))
    faces = [] if face is None else [Face(face.score, transform.apply_box(face.box), transform.apply(face.keypoints))]
    region = face_box_and_mask((w, h), faces, body=body_out)
    area = float((mask > 0.5).sum()) * abs(transform.matrix[0, 0] * transform.matrix[1, 1])
    kept = float((person > 0.5).sum()) / area if area > 0 else 1.0
    box = None if face_box is None or region.box is None else transform.apply_box(face_box)
    return Reference(fitted, transform, person, region, box, 0.0 if face is None else float(face.score), body_out,
                     cut_parts(body, ends, transform, (w, h)), min(kept, 1.0))
