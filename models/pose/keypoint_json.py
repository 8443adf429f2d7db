"""POSE_KEYPOINT: the per-frame OpenPose-JSON dicts that comfyui_controlnet_aux passes between nodes.

One dict per frame::

    {"people": [{"pose_keypoints_2d": [x, y, c] * 18,        # flat floats, always present
                 "face_keypoints_2d": [x, y, c] * 70 | None,  # 68 face points + body 14, 15
                 "hand_left_keypoints_2d": [x, y, c] * 21 | None,
                 "hand_right_keypoints_2d": [x, y, c] * 21 | None}],
     "canvas_height": H, "canvas_width": W}

Coordinates are pixels; c is 1.0 for a point scored >= 0.3 and the point is [0, 0, 0] otherwise.
A face or hand without any such point is None; the body is always a list (all zeros when empty),
as controlnet_aux writes it. controlnet_aux reads any point with c < 1.0 as missing.

Because c is binary, each person also carries ``"marionette_scores"`` (other packs ignore it):
the real per-point scores of every part, and under ``"faint_xy"`` the coordinates of points
scored below 0.3 (which the standard lists must write as zeros). Where the backend estimates 3D
(the embedded one), ``"marionette_world"`` holds the body 18 as flat [x, y, z] * 18 in metres
around the hip centre, camera axes (x right, y down, z away from the camera).
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import MarionetteError
from .types import BODY, FACE, HAND, VISIBLE, PoseFrame

SCORES_KEY = "marionette_scores"
WORLD_KEY = "marionette_world"
FAINT_KEY = "faint_xy"
# (standard key, PoseFrame attribute, scores sub-key, points per person)
PART_KEYS = (
    ("pose_keypoints_2d", "body", "body", BODY),
    ("face_keypoints_2d", "face", "face", FACE),
    ("hand_left_keypoints_2d", "left_hand", "hand_left", HAND),
    ("hand_right_keypoints_2d", "right_hand", "hand_right", HAND),
)
FACE_EYES = (14, 15)  # body points controlnet_aux appends to the 68 face points (OpenPose 70)
# OpenPose BODY_25 -> COCO-18 order (drops mid-hip and the feet), for JSON written by OpenPose itself
BODY25_TO_18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)

_FIX_FORMAT = ("Pass the POSE_KEYPOINT output of a pose node (a list of per-frame dicts with 'people', "
               "'canvas_width' and 'canvas_height'), or its JSON text.")


# ----------------------------------------------------------------------------------------------- encode

def _triples(points: np.ndarray, visible: np.ndarray) -> list[float]:
    out: list[float] = []
    for (x, y, _), v in zip(points, visible):
        out += [float(x), float(y), 1.0] if v else [0.0, 0.0, 0.0]
    return out


def _encode_person(frame: PoseFrame, i: int, with_scores: bool) -> dict:
    person: dict[str, Any] = {}
    body = frame.body[i]
    body_vis = body[:, 2] >= VISIBLE
    for key, attr, _, _ in PART_KEYS:
        pts = getattr(frame, attr)[i]
        vis = pts[:, 2] >= VISIBLE
        if attr == "body":
            person[key] = _triples(pts, vis)
        elif not vis.any():
            person[key] = None
        elif attr == "face":
            eyes = body[list(FACE_EYES)]
            person[key] = _triples(pts, vis) + _triples(eyes, body_vis[list(FACE_EYES)])
        else:
            person[key] = _triples(pts, vis)
    if with_scores:
        person[SCORES_KEY] = _encode_scores(frame, i)
    if with_scores and frame.world is not None:
        person[WORLD_KEY] = [float(v) for v in frame.world[i].reshape(-1)]
    return person


def _encode_scores(frame: PoseFrame, i: int) -> dict:
    scores: dict[str, Any] = {}
    faint: dict[str, dict[str, list[float]]] = {}
    for _, attr, sub, _ in PART_KEYS:
        pts = getattr(frame, attr)[i]
        scores[sub] = [float(s) for s in pts[:, 2]]
        low = np.nonzero((pts[:, 2] > 0) & (pts[:, 2] < VISIBLE))[0]
        if len(low):
            faint[sub] = {str(int(j)): [float(pts[j, 0]), float(pts[j, 1])] for j in low}
    if faint:
        scores[FAINT_KEY] = faint
    return scores


def frames_to_pose_keypoint(frames: list[PoseFrame], with_scores: bool = True) -> list[dict]:
    """PoseFrames -> POSE_KEYPOINT (list of per-frame dicts, JSON-serialisable).

    with_scores=False writes the bare controlnet_aux structure without the real scores.
    """
    if isinstance(frames, PoseFrame):
        frames = [frames]
    out = []
    for frame in frames:
        if not isinstance(frame, PoseFrame):
            raise MarionetteError(f"Expected PoseFrame objects, got {type(frame).__name__}.",
                                  "Pass the frames produced by a Marionette pose node.")
        out.append({"people": [_encode_person(frame, i, with_scores) for i in range(frame.num_people)],
                    "canvas_height": int(frame.height), "canvas_width": int(frame.width)})
    return out


# ----------------------------------------------------------------------------------------------- decode

def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MarionetteError(f"The pose keypoint text is not valid JSON ({e.msg} at character {e.pos}).",
                              _FIX_FORMAT) from None


def _frame_dicts(data: Any) -> list[dict]:
    """Flatten the accepted containers (dict, list, JSON text, nested lists) into frame dicts."""
    if isinstance(data, (str, bytes)):
        data = _load_json(data.decode() if isinstance(data, bytes) else data)
    if isinstance(data, dict):
        return [data]
    if isinstance(data, (list, tuple)):
        out: list[dict] = []
        for item in data:
            out += _frame_dicts(item)
        return out
    raise MarionetteError(f"Pose keypoints must be a dict or a list of dicts, got {type(data).__name__}.",
                          _FIX_FORMAT)


def _canvas(frame: dict, where: str, canvas_size) -> tuple[int, int]:
    w, h = frame.get("canvas_width"), frame.get("canvas_height")
    if w is None or h is None:
        if canvas_size is None:
            raise MarionetteError(f"{where} has no 'canvas_width'/'canvas_height'.",
                                  "Pass canvas_size=(width, height) or add both keys to the pose data.")
        w, h = canvas_size
    try:
        w, h = int(w), int(h)
    except (TypeError, ValueError):
        raise MarionetteError(f"{where} has a non-numeric canvas size ({w!r} x {h!r}).", _FIX_FORMAT) from None
    if w <= 0 or h <= 0:
        raise MarionetteError(f"{where} has an empty canvas ({w} x {h}).", _FIX_FORMAT)
    return w, h


def _points(value: Any, n: int, where: str) -> np.ndarray:
    """A flat [x,y,c]*N or nested [[x,y,c],...] list -> [n, 3] (missing part -> zeros)."""
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return np.zeros((n, 3), np.float32)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise MarionetteError(f"{where} holds non-numeric values.", _FIX_FORMAT) from None
    if arr.ndim == 1 and arr.size % 3 == 0:
        arr = arr.reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise MarionetteError(f"{where} is not a list of (x, y, confidence) triples (shape {arr.shape}).",
                              _FIX_FORMAT)
    if not np.isfinite(arr).all():
        raise MarionetteError(f"{where} contains NaN or infinite values.", _FIX_FORMAT)
    if n == BODY and len(arr) == len(BODY25_TO_18) + 7:
        arr = arr[list(BODY25_TO_18)]
    elif n == FACE and len(arr) == FACE + len(FACE_EYES):
        arr = arr[:FACE]
    if len(arr) != n:
        raise MarionetteError(f"{where} has {len(arr)} points; {n} were expected.", _FIX_FORMAT)
    arr = arr.copy()
    arr[arr[:, 2] <= 0] = 0.0  # c <= 0 means missing, whatever the stored x, y
    return arr.astype(np.float32)


def _apply_scores(pts: np.ndarray, scores: Any, faint: Any) -> np.ndarray:
    """Restore the real scores: of points the standard list marks visible, and of faint points."""
    if not isinstance(scores, (list, tuple)) or len(scores) != len(pts):
        return pts
    try:
        s = np.asarray(scores, dtype=np.float32)
    except (TypeError, ValueError):
        return pts
    if not np.isfinite(s).all():
        return pts
    pts = pts.copy()
    # A point an editor added or moved keeps its standard c when the stored score disagrees.
    keep = (pts[:, 2] > 0) & (s >= VISIBLE)
    pts[keep, 2] = s[keep]
    if isinstance(faint, dict):
        for key, xy in faint.items():
            j = int(key) if str(key).isdigit() else -1
            if 0 <= j < len(pts) and pts[j, 2] == 0 and 0 < s[j] < VISIBLE and _is_xy(xy):
                pts[j] = (xy[0], xy[1], s[j])
    return pts


def _is_xy(xy: Any) -> bool:
    return (isinstance(xy, (list, tuple)) and len(xy) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in xy))


def _decode_person(person: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(person, dict):
        raise MarionetteError(f"{where} is a {type(person).__name__}, not a dict of keypoint lists.",
                              _FIX_FORMAT)
    stored = person.get(SCORES_KEY)
    stored = stored if isinstance(stored, dict) else {}
    faint = stored.get(FAINT_KEY) if isinstance(stored.get(FAINT_KEY), dict) else {}
    parts = {}
    for key, attr, sub, n in PART_KEYS:
        pts = _points(person.get(key), n, f"{where} '{key}'")
        parts[attr] = _apply_scores(pts, stored.get(sub), faint.get(sub))
    parts["world"] = _world(person.get(WORLD_KEY))
    return parts


def _world(value: Any) -> np.ndarray | None:
    """The person's 3D body 18 from "marionette_world", or None where absent or malformed."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if value is None or arr.size != BODY * 3 or not np.isfinite(arr).all():
        return None
    return arr.reshape(BODY, 3).astype(np.float32)


def _denormalise_if_needed(people: list[dict[str, np.ndarray]], w: int, h: int) -> None:
    """Some editors write 0..1 coordinates; controlnet_aux draws a part in 0..1 as normalised too."""
    xy = [p[:, :2][p[:, 2] > 0] for person in people for p in person.values()]
    xy = np.concatenate(xy) if xy else np.zeros((0, 2))
    if len(xy) == 0 or max(w, h) <= 1 or xy.min() < 0 or xy.max() > 1:
        return
    for person in people:
        for p in person.values():
            vis = p[:, 2] > 0
            p[vis, 0] *= w
            p[vis, 1] *= h


def pose_keypoint_to_frames(data: Any, canvas_size: tuple[int, int] | None = None) -> list[PoseFrame]:
    """POSE_KEYPOINT (list of frame dicts, one dict, JSON text, nested lists) -> PoseFrames.

    canvas_size=(width, height) is used for frames that lack canvas_width/canvas_height.
    Scores come from "marionette_scores" when present, else from c.
    """
    frames = []
    for f, frame in enumerate(_frame_dicts(data)):
        where = f"Pose frame {f}"
        w, h = _canvas(frame, where, canvas_size)
        people = frame.get("people") or []
        if not isinstance(people, (list, tuple)):
            raise MarionetteError(f"{where} 'people' is a {type(people).__name__}, not a list.", _FIX_FORMAT)
        decoded = [_decode_person(p, f"{where}, person {i}") for i, p in enumerate(people)]
        worlds = [d.pop("world") for d in decoded]
        _denormalise_if_needed(decoded, w, h)
        stack = {attr: np.stack([d[attr] for d in decoded]) if decoded else np.zeros((0, n, 3), np.float32)
                 for _, attr, _, n in PART_KEYS}
        world = np.stack(worlds) if worlds and all(x is not None for x in worlds) else None
        frames.append(PoseFrame(w, h, world=world, **stack))
    return frames


def frames_to_json(frames: list[PoseFrame], with_scores: bool = True) -> str:
    """JSON text of frames_to_pose_keypoint (what controlnet_aux shows in its 'openpose_json' UI)."""
    return json.dumps(frames_to_pose_keypoint(frames, with_scores))
