"""Face box, keypoints and soft mask: BlazeFace (face_detection_short_range.tflite), with a fallback
from pose keypoints.

Facts from MediaPipe's face_detection graphs (v0.10.14) and the model itself:
- input 1×128×128×3 RGB in [-1, 1]; the image is letterboxed to a square (keep_aspect_ratio
  true, black border: BORDER_ZERO on the image before the value mapping, so the border is −1);
- outputs "regressors" [1, 896, 16] (box cx, cy, w, h + 6 keypoints, in input pixels, relative
  to the anchor centre) and "classificators" [1, 896, 1] logits → sigmoid, threshold 0.5;
- anchors: 4 layers, strides 8/16/16/16, interpolated scale 1.0 → 2 per cell per layer
  (16²·2 + 8²·6 = 896), weighted NMS at IoU 0.3 — ssd.FACE_DETECTOR;
- keypoints: right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion
  (the person's right and left).
The short-range model only sees faces that fill a good part of its 128² input (selfie
distance). In a full-body photo the face is far smaller, so `FaceDetector.candidates` also looks
in squares around the head that the body keypoints place (and at the top of the person's box),
and `choose_face` picks by confidence and agreement with the body's head keypoints: on real
photos a whole-image detection at 0.5–0.6 is often a face-like patch (a printed face, a costume)
or a box twice too large, while the head-region detection of the same person scores 0.8–0.95.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..pose.types import VISIBLE, PoseFrame
from . import ssd
from .image import Affine, check_rgb, letterbox
from .tflite import TFLiteModel

FACE_KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
FACE_EXPAND = 1.3  # BlazeFace's box runs brow to chin; ×1.3 takes in the hair line, the chin and the ears
HAIR_SHIFT = 0.1   # the expanded box moves up by this fraction of the face box: more hair above than chin below
OP_NOSE, OP_NECK, OP_R_EYE, OP_L_EYE, OP_R_EAR, OP_L_EAR = 0, 1, 14, 15, 16, 17  # OpenPose-18 indices
MIN_FACE_POINTS = 20  # visible 68-point landmarks needed to trust their box over the head keypoints
# Squares around the face box the body keypoints predict, in multiples of its side: BlazeFace short-range
# scores a face best when it spans 1/4..1/2 of its input (on COCO-WholeBody faces: 0.8–0.9 at 2–4×).
HEAD_CONTEXT = (2.0, 3.0, 4.0)
MIN_AGREEMENT = 0.15  # IoU with the body's predicted face box below which a detection is someone/something else


@dataclass
class Face:
    score: float
    box: np.ndarray        # x0, y0, x1, y1 in image pixels
    keypoints: np.ndarray  # [6, 2] xy in image pixels, FACE_KEYPOINTS order


class FaceDetector:
    """`FaceDetector(path)(image uint8 [H,W,3]) -> list[Face]`, best first, in image pixels."""

    def __init__(self, model_path: str, min_score: float = ssd.FACE_DETECTOR.min_score,
                 num_threads: int | None = None):
        self.model = TFLiteModel(model_path, num_threads)
        self.spec = replace(ssd.FACE_DETECTOR, min_score=min_score)
        self.anchors = ssd.anchor_centres(self.spec)

    def __call__(self, image: np.ndarray, region=None) -> list[Face]:
        """Faces in the whole image, or in the square around `region` (x0, y0, x1, y1) if given."""
        image = check_rgb(image)
        crop, to_crop = (image, Affine.scale_shift(1, 1)) if region is None else square_crop(image, region)
        n = self.spec.input_size
        tensor, to_input = letterbox(crop, (n, n))
        raw_boxes, raw_scores = self.model(tensor.astype(np.float32)[None] / 127.5 - 1.0)
        back = to_crop.then(to_input).then(Affine.scale_shift(1.0 / n, 1.0 / n)).inverse()
        return [Face(d.score, back.apply_box(d.box), back.apply(d.keypoints))
                for d in ssd.decode(raw_boxes, raw_scores, self.anchors, self.spec)]

    def find(self, image: np.ndarray, person_box=None) -> list[Face]:
        """Whole image first; if nothing is found and a person box is known, the head region."""
        faces = self(image)
        if faces or person_box is None:
            return faces
        for region in head_regions(person_box):
            faces = self(image, region)
            if faces:
                return faces
        return []

    def candidates(self, image: np.ndarray, person_box=None, body: np.ndarray | None = None) -> list[Face]:
        """Every face found in the whole image, in squares around the head the body keypoints
        (OpenPose-18 [18, 3], image pixels) place, and at the top of `person_box`; best score first."""
        regions: list = [None]
        expected = None if body is None else face_box_from_body(body)
        if expected is not None:
            regions += context_squares(expected)
        if person_box is not None:
            regions += head_regions(person_box)
        faces = [face for region in regions for face in self(image, region)]
        return sorted(faces, key=lambda f: -f.score)


def square_crop(image: np.ndarray, region) -> tuple[np.ndarray, Affine]:
    """The square around `region` (its longer side, same centre), zero outside the image."""
    x0, y0, x1, y1 = (float(v) for v in region)
    side = max(1, int(round(max(x1 - x0, y1 - y0))))
    left, top = int(round((x0 + x1 - side) / 2)), int(round((y0 + y1 - side) / 2))
    h, w = image.shape[:2]
    out = np.zeros((side, side) + image.shape[2:], image.dtype)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    return out, Affine.scale_shift(1.0, 1.0, -left, -top)


def head_regions(person_box) -> list[np.ndarray]:
    """Squares at the top of a person box where the head should be, largest first.

    A standing person's head is about 1/7 of the body height; a head-and-shoulders portrait is
    as wide as the box. The squares cover both, with the head in the upper part.
    """
    x0, y0, x1, y1 = (float(v) for v in person_box)
    cx, height, width = (x0 + x1) / 2, y1 - y0, x1 - x0
    out = []
    for side in (min(width, height), 0.45 * height, 0.3 * height):
        out.append(np.array([cx - side / 2, y0 - 0.1 * side, cx + side / 2, y0 + 0.9 * side]))
    return out


def context_squares(face_box) -> list[np.ndarray]:
    """Squares of HEAD_CONTEXT × the face box's side, centred on it."""
    box = np.asarray(face_box, np.float64)
    centre, side = (box[:2] + box[2:]) / 2, max(box[2] - box[0], box[3] - box[1])
    return [np.concatenate([centre - k * side / 2, centre + k * side / 2]) for k in HEAD_CONTEXT]


def box_iou(a, b) -> float:
    return float(ssd.iou(np.asarray(a, np.float64), np.asarray(b, np.float64)[None])[0])


def choose_face(faces: list[Face], body: np.ndarray | None = None) -> Face | None:
    """The person's face among detector candidates, or None.

    Without a body: the most confident. With a body but no head keypoints (a back view): the most
    confident inside the body's keypoint box (grown by 25 %). With them: only detections agreeing with the
    face box the keypoints predict (IoU ≥ MIN_AGREEMENT) count, ranked by score + agreement, so a
    weak whole-image box twice the size, or a face printed on a shirt, loses to the head's own.
    """
    if not faces:
        return None
    expected = None if body is None else face_box_from_body(body)
    if expected is None and body is not None:
        # a body without head keypoints (seen from behind): only a face on that body can be its face
        points = np.asarray(body, np.float64).reshape(-1, 3)
        points = points[points[:, 2] > VISIBLE, :2]
        if len(points):
            lo, hi = points.min(0), points.max(0)
            lo, hi = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
            faces = [f for f in faces if np.all(lo <= (f.box[:2] + f.box[2:]) / 2) and
                     np.all((f.box[:2] + f.box[2:]) / 2 <= hi)]
    if expected is None:
        return max(faces, key=lambda f: f.score) if faces else None
    ranked = [(f.score + box_iou(f.box, expected), f) for f in faces]
    ranked = [(r, f) for r, f in ranked if r - f.score >= MIN_AGREEMENT]
    return max(ranked, key=lambda rf: rf[0])[1] if ranked else None


def face_box_from_body(body: np.ndarray) -> np.ndarray | None:
    """A BlazeFace-like face box (brow to chin) from OpenPose-18 body keypoints [18, 3], or None.

    The side comes from whichever head measures are visible, the largest (turning the head only
    shortens them): ear to ear × 0.9, eye to eye / 0.45, nose to neck / 1.8 (the OpenPose neck
    sits at the shoulder line). The centre is 0.3 sides below the eyes. These ratios match
    BlazeFace's box on a frontal body render (tests/data/person_512.png) within about 10 %.
    """
    b = np.asarray(body, np.float64).reshape(-1, 3)
    vis = lambda i: b[i, 2] > VISIBLE  # noqa: E731
    head = [i for i in (OP_NOSE, OP_R_EYE, OP_L_EYE, OP_R_EAR, OP_L_EAR) if vis(i)]
    if not head:
        return None
    sizes = []
    if vis(OP_R_EAR) and vis(OP_L_EAR):
        sizes.append(np.linalg.norm(b[OP_R_EAR, :2] - b[OP_L_EAR, :2]) * 0.9)
    if vis(OP_R_EYE) and vis(OP_L_EYE):
        sizes.append(np.linalg.norm(b[OP_R_EYE, :2] - b[OP_L_EYE, :2]) / 0.45)
    if vis(OP_NOSE) and vis(OP_NECK):
        sizes.append(np.linalg.norm(b[OP_NOSE, :2] - b[OP_NECK, :2]) / 1.8)
    if not sizes:
        return None
    side = max(sizes)
    eyes = [i for i in (OP_R_EYE, OP_L_EYE) if vis(i)]
    cx = b[head, 0].mean()
    cy = (b[eyes, 1].mean() if eyes else b[head, 1].mean()) + 0.3 * side
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def face_box_from_pose(body: np.ndarray, face: np.ndarray | None = None) -> np.ndarray | None:
    """Brow-to-chin face box from a person's pose: the box of the 68 face landmarks [68, 3] when enough
    are visible (they span brow to chin like BlazeFace's box), else `face_box_from_body`."""
    if face is not None:
        points = np.asarray(face, np.float64).reshape(-1, 3)
        points = points[points[:, 2] > VISIBLE, :2]
        if len(points) >= MIN_FACE_POINTS and np.ptp(points, axis=0).min() > 0:
            return np.concatenate([points.min(axis=0), points.max(axis=0)])
    return face_box_from_body(body)


@dataclass
class FaceRegion:
    box: np.ndarray | None  # expanded x0, y0, x1, y1 in image pixels, clipped; None if no face
    mask: np.ndarray        # float32 [H, W] in 0..1
    source: str             # "detector", "pose" or "none"


def face_box_and_mask(image_size: tuple[int, int], faces: list[Face] | None = None,
                      body: np.ndarray | None = None, face_points: np.ndarray | None = None,
                      expand: float = FACE_EXPAND,
                      shape: str = "ellipse", feather: float = 0.2) -> FaceRegion:
    """The face region of an image of `image_size`=(w, h): detector's best face, else the pose (body
    keypoints, and the 68 face landmarks `face_points` when given).

    The face box is scaled by `expand` about its centre, moved up by HAIR_SHIFT of its height
    and clipped to the image. The mask is 1
    inside an ellipse (or rectangle) inscribed in the expanded box and fades to 0 over the
    outer `feather` fraction of its radius.
    """
    w, h = int(image_size[0]), int(image_size[1])
    box, source = None, "none"
    if faces:
        box, source = np.asarray(faces[0].box, np.float64), "detector"
    elif body is not None:
        box = face_box_from_pose(body, face_points)
        source = "pose" if box is not None else "none"
    if box is None:
        return FaceRegion(None, np.zeros((h, w), np.float32), "none")
    full = expand_face_box(box, expand)
    mask = soft_shape_mask((w, h), full, shape, feather)
    clipped = np.clip(full, 0, [w, h, w, h])
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        return FaceRegion(None, np.zeros((h, w), np.float32), "none")
    return FaceRegion(clipped, mask, source)


def expand_face_box(box, expand: float = FACE_EXPAND) -> np.ndarray:
    """A brow-to-chin face box scaled by `expand` about its centre and moved up by HAIR_SHIFT of its
    height: the head from the hair line to the chin, ears included."""
    box = np.asarray(box, np.float64)
    c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * expand
    c[1] -= HAIR_SHIFT * (box[3] - box[1])
    return np.concatenate([c - half, c + half])


def soft_shape_mask(image_size: tuple[int, int], box, shape: str = "ellipse", feather: float = 0.2) -> np.ndarray:
    """float32 [H, W]: 1 inside the ellipse/rectangle in `box`, a linear fade over `feather`."""
    if shape not in ("ellipse", "rectangle"):
        raise ValueError(f"shape must be 'ellipse' or 'rectangle', not {shape!r}")
    w, h = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((h, w), np.float32)
    # only the pixels under the box can be non-zero
    c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
    if c1 <= c0 or r1 <= r0:
        return out
    a, b = max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    dx = (np.arange(c0, c1) + 0.5 - (x0 + x1) / 2)[None, :] / a
    dy = (np.arange(r0, r1) + 0.5 - (y0 + y1) / 2)[:, None] / b
    r = np.sqrt(dx ** 2 + dy ** 2) if shape == "ellipse" else np.maximum(np.abs(dx), np.abs(dy))
    out[r0:r1, c0:c1] = np.clip((1.0 - r) / max(float(feather), 1e-6), 0.0, 1.0)
    return out


def pose_face_mask(frame: PoseFrame) -> np.ndarray:
    """float32 [H, W] soft face mask (as `face_box_and_mask` draws it) of the person with the largest face
    in a pose frame, zeros when no face can be placed."""
    best, best_area = None, 0.0
    for index in range(frame.num_people):
        box = face_box_from_pose(frame.body[index], frame.face[index])
        area = 0.0 if box is None else float(np.prod(box[2:] - box[:2]))
        if area > best_area:
            best, best_area = index, area
    if best is None:
        return np.zeros((frame.height, frame.width), np.float32)
    return face_box_and_mask((frame.width, frame.height), body=frame.body[best], face_points=frame.face[best]).mask
