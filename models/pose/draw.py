"""Skeleton images from PoseFrames, in the two styles the pose-conditioned models were trained on.

* ``draw_pose_mimicmotion``: the confidence-aware renderer of MimicMotion (``mimicmotion/dwpose/util.py``),
  which StableAnimator copies unchanged. Their PoseNets saw exactly these pixels.
* ``draw_pose_openpose``: the ControlNet OpenPose / DWPose look of comfyui_controlnet_aux
  (``dwpose/util.py``): full colours, no confidence fading.

Both return uint8 RGB [H, W, 3]. Coordinates are pixels of the frame's own canvas; a different
output size stretches them to fit.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import MarionetteError
from .types import VISIBLE, PoseFrame

# OpenPose-18 limbs (0-based); the first 17 are drawn, the last two (ear-shoulder) never are.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
DRAWN_LIMBS = 17
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
               (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
               (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
              (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
# draw style key → (renderer, options): MimicMotion and StableAnimator trained their PoseNets on the same
# confidence-weighted drawing with swapped colour channels; OpenPose is controlnet_aux's look
DRAW_STYLES = {"mimicmotion": ("mimicmotion", {"channel_order": "mimicmotion"}),
               "stableanimator": ("mimicmotion", {"channel_order": "stableanimator"}),
               "openpose": ("openpose", {})}
EPS = 0.01            # hand/face points whose integer pixel x or y is not above this are skipped
STICK_WIDTH = 4       # ellipse half-thickness of a limb, canvas pixels
JOINT_RADIUS = 4
HAND_LINE = 2
HAND_POINT_RADIUS = 4
FACE_RADIUS = 3
MIMIC_REF_SIDE = 2160  # MimicMotion draws on a canvas whose short side is this, then resizes
MIMIC_DIM = 0.6        # the limb layer is multiplied by this before the joints are drawn
CHANNEL_ORDERS = ("mimicmotion", "stableanimator")


def hand_edge_color(i: int) -> tuple[float, float, float]:
    """Edge i's colour, matplotlib.colors.hsv_to_rgb([i/20, 1, 1]) in floats 0..1 (same arithmetic)."""
    h6 = (i / float(len(HAND_EDGES))) * 6.0
    k = int(h6)
    f = h6 - k
    v, p, q, t = 1.0, 0.0, 1.0 - f, 1.0 - (1.0 - f)
    return ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))[k % 6]


def _out_size(frame: PoseFrame, width, height) -> tuple[int, int]:
    w = int(width) if width else int(frame.width)
    h = int(height) if height else int(frame.height)
    if w <= 0 or h <= 0:
        raise MarionetteError(f"Cannot draw a pose on a {w}x{h} canvas.", "Give a positive width and height.")
    return w, h


def _limb_polygon(xa, ya, xb, yb, stick: int) -> np.ndarray:
    """The filled ellipse of one limb, with the reference code's integer rounding."""
    mx, my = (xa + xb) / 2, (ya + yb) / 2
    length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
    angle = math.degrees(math.atan2(ya - yb, xa - xb))
    return cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), stick), int(angle), 0, 360, 1)


# --------------------------------------------------------------------------------------- MimicMotion style

def _normalised(points: np.ndarray, frame: PoseFrame) -> np.ndarray:
    """Pixels -> 0..1 in float32, the detector's storage, so canvas rounding matches the reference."""
    out = points.astype(np.float32).copy()
    out[..., 0] /= np.float32(frame.width)
    out[..., 1] /= np.float32(frame.height)
    return out


def _mimic_body(canvas, body, sx, sy) -> np.ndarray:
    """Limbs faded by the product of their end scores, layer × 0.6, then joints faded by score."""
    for i in range(DRAWN_LIMBS):
        a, b = LIMBS[i]
        for person in body:
            ca, cb = person[a, 2], person[b, 2]
            if ca < VISIBLE or cb < VISIBLE:
                continue
            poly = _limb_polygon(person[a, 0] * sx, person[a, 1] * sy, person[b, 0] * sx, person[b, 1] * sy,
                                 STICK_WIDTH)
            cv2.fillConvexPoly(canvas, poly, [int(c * (ca * cb)) for c in BODY_COLORS[i]])
    canvas = (canvas * MIMIC_DIM).astype(np.uint8)
    for i in range(len(BODY_COLORS)):
        for person in body:
            conf = person[i, 2]
            if conf <= VISIBLE:  # the reference marks a joint visible only when score > 0.3
                continue
            x, y = int(person[i, 0] * sx), int(person[i, 1] * sy)
            cv2.circle(canvas, (x, y), JOINT_RADIUS, [int(c * conf) for c in BODY_COLORS[i]], thickness=-1)
    return canvas


def _mimic_hands(canvas, hands, sx, sy) -> None:
    for hand in hands:
        for ie, (a, b) in enumerate(HAND_EDGES):
            if hand[a, 2] <= 0 or hand[b, 2] <= 0:
                continue
            x1, y1 = int(hand[a, 0] * sx), int(hand[a, 1] * sy)
            x2, y2 = int(hand[b, 0] * sx), int(hand[b, 1] * sy)
            score = int(hand[a, 2] * hand[b, 2] * 255)
            if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
                color = tuple(c * score for c in hand_edge_color(ie))
                cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=HAND_LINE)
        for x, y, s in hand:
            if s <= 0:
                continue
            x, y = int(x * sx), int(y * sy)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), HAND_POINT_RADIUS, (0, 0, int(s * 255)), thickness=-1)


def _mimic_faces(canvas, faces, sx, sy) -> None:
    for face in faces:
        for x, y, s in face:
            if s <= 0:
                continue
            x, y, conf = int(x * sx), int(y * sy), int(s * 255)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), FACE_RADIUS, (conf, conf, conf), thickness=-1)


def mimicmotion_canvas(frame: PoseFrame, width: int, height: int, draw_body=True, draw_hands=True,
                       draw_face=True, ref_side: int = MIMIC_REF_SIDE) -> np.ndarray:
    """The large BGR canvas (short side = ref_side) before the final resize."""
    sz = min(height, width)
    sr = (ref_side / sz) if sz != ref_side else 1
    canvas = np.zeros((int(height * sr), int(width * sr), 3), np.uint8)
    ch, cw = canvas.shape[:2]
    sx, sy = np.float32(cw), np.float32(ch)
    if draw_body:
        canvas = _mimic_body(canvas, _normalised(frame.body, frame), sx, sy)
    if draw_hands:
        # all left hands, then all right hands, as the reference stacks them
        hands = np.concatenate([frame.left_hand, frame.right_hand])
        _mimic_hands(canvas, _normalised(hands, frame), sx, sy)
    if draw_face:
        _mimic_faces(canvas, _normalised(frame.face, frame), sx, sy)
    return canvas


def draw_pose_mimicmotion(frame: PoseFrame, width: int | None = None, height: int | None = None, *,
                          draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True,
                          channel_order: str = "mimicmotion", ref_side: int = MIMIC_REF_SIDE) -> np.ndarray:
    """MimicMotion / StableAnimator pose image, uint8 RGB [H, W, 3].

    The reference draws its colour lists into an OpenCV (BGR) canvas and then swaps to RGB.
    channel_order="mimicmotion" returns that swapped array, which is what MimicMotion's PoseNet
    receives (inference.py passes it on unchanged). StableAnimator writes the swapped array with cv2.imwrite and reads
    the PNG back as RGB, which undoes the swap: use channel_order="stableanimator" for its PoseNet.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise MarionetteError(f"Unknown channel order {channel_order!r}.", f"Use one of {CHANNEL_ORDERS}.")
    w, h = _out_size(frame, width, height)
    canvas = mimicmotion_canvas(frame, w, h, draw_body, draw_hands, draw_face, ref_side)
    canvas = cv2.resize(canvas, (w, h))
    if channel_order == "mimicmotion":
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(canvas)


# ------------------------------------------------------------------------------------------ OpenPose style

def _xinsr_stick_scale(w: int, h: int) -> int:
    side = max(w, h)
    return 1 if side < 500 else min(2 + side // 1000, 7)


def _openpose_body(canvas, body, sx, sy, stick) -> None:
    vis = body[:, 2] >= VISIBLE
    for i in range(DRAWN_LIMBS):
        a, b = LIMBS[i]
        if not (vis[a] and vis[b]):
            continue
        poly = _limb_polygon(body[a, 0] * sx, body[a, 1] * sy, body[b, 0] * sx, body[b, 1] * sy, stick)
        cv2.fillConvexPoly(canvas, poly, [int(float(c) * 0.6) for c in BODY_COLORS[i]])
    for i, color in enumerate(BODY_COLORS):
        if vis[i]:
            x, y = int(body[i, 0] * sx), int(body[i, 1] * sy)
            cv2.circle(canvas, (x, y), JOINT_RADIUS, color, thickness=-1)


def _openpose_hand(canvas, hand, sx, sy) -> None:
    vis = hand[:, 2] >= VISIBLE
    for ie, (a, b) in enumerate(HAND_EDGES):
        if not (vis[a] and vis[b]):
            continue
        x1, y1 = int(hand[a, 0] * sx), int(hand[a, 1] * sy)
        x2, y2 = int(hand[b, 0] * sx), int(hand[b, 1] * sy)
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            color = tuple(c * 255 for c in hand_edge_color(ie))
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=HAND_LINE)
    for x, y, _ in hand[vis]:
        x, y = int(x * sx), int(y * sy)
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), HAND_POINT_RADIUS, (0, 0, 255), thickness=-1)


def _openpose_face(canvas, face, eyes, sx, sy) -> None:
    """White dots; controlnet_aux's 70-point face repeats the two body eye points."""
    if not (face[:, 2] >= VISIBLE).any():
        return
    points = np.concatenate([face, eyes])
    for x, y, _ in points[points[:, 2] >= VISIBLE]:
        x, y = int(x * sx), int(y * sy)
        if x > EPS and y > EPS:
            cv2.circle(canvas, (x, y), FACE_RADIUS, (255, 255, 255), thickness=-1)


def draw_pose_openpose(frame: PoseFrame, width: int | None = None, height: int | None = None, *,
                       draw_body: bool = True, draw_hands: bool = True, draw_face: bool = True,
                       xinsr_stick_scaling: bool = False) -> np.ndarray:
    """controlnet_aux OpenPose/DWPose pose image, uint8 RGB [H, W, 3]; points scored < 0.3 are missing."""
    w, h = _out_size(frame, width, height)
    canvas = np.zeros((h, w, 3), np.uint8)
    sx = np.float32(w / frame.width)
    sy = np.float32(h / frame.height)
    stick = STICK_WIDTH * (_xinsr_stick_scale(w, h) if xinsr_stick_scaling else 1)
    for p in range(frame.num_people):  # person by person: body, left hand, right hand, face
        if draw_body:
            _openpose_body(canvas, frame.body[p], sx, sy, stick)
        if draw_hands:
            _openpose_hand(canvas, frame.left_hand[p], sx, sy)
            _openpose_hand(canvas, frame.right_hand[p], sx, sy)
        if draw_face:
            _openpose_face(canvas, frame.face[p], frame.body[p, [14, 15]], sx, sy)
    return canvas


STYLES = {"mimicmotion": draw_pose_mimicmotion, "openpose": draw_pose_openpose}


def draw_pose(frame: PoseFrame, style: str = "mimicmotion", width: int | None = None,
              height: int | None = None, **options) -> np.ndarray:
    """Dispatch to a renderer by name ("mimicmotion" or "openpose")."""
    if style not in STYLES:
        raise MarionetteError(f"Unknown pose drawing style {style!r}.", f"Use one of {tuple(STYLES)}.")
    return STYLES[style](frame, width, height, **options)


def draw_frames(frames: list[PoseFrame], style: str = "mimicmotion", width: int | None = None,
                height: int | None = None, **options) -> np.ndarray:
    """[F, H, W, 3] uint8 for a sequence of frames (every frame drawn at the same size)."""
    if not frames:
        raise MarionetteError("There are no pose frames to draw.", "Connect a pose sequence with frames.")
    w, h = _out_size(frames[0], width, height)
    return np.stack([draw_pose(f, style, w, h, **options) for f in frames])
