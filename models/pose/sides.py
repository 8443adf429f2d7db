"""Left and right kept consistent through a clip.

A pose model labels each frame on its own, so it can swap a person's left and right limbs for a
frame or a stretch (mostly when the person turns), and the skeleton then jumps across the body.
Over a known clip the labelling can be chosen with hindsight: for every tracked person and frame
there are two candidates, the labels as found and the mirror labelling, and a Viterbi pass picks
the sequence that moves the paired joints least from frame to frame (distances in body sizes),
with a small cost for overruling the model (SWAP_COST), and a large one where the face landmarks
(a face model does not confuse its own left and right) contradict the body's eyes.
"""
from __future__ import annotations

import numpy as np

from .types import VISIBLE, PoseFrame

# OpenPose-18 index of each joint's mirror (nose and neck are their own)
MIRROR_BODY = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)
PAIRED = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
R_EYE, L_EYE = 14, 15
FACE_R_EYE, FACE_L_EYE = slice(36, 42), slice(42, 48)  # iBUG-68 eye contours (the person's right, left)
SWAP_COST = 0.02      # body sizes of motion a swap must save to overrule the model
FACE_CONFLICT = 1.0   # cost of labels whose eyes disagree with the face landmarks


def mirrored(body: np.ndarray, left_hand: np.ndarray, right_hand: np.ndarray):
    """One person's parts with left and right exchanged."""
    return body[list(MIRROR_BODY)], right_hand, left_hand


def _size(body: np.ndarray) -> float:
    pts = body[body[:, 2] >= VISIBLE, :2]
    return float(np.linalg.norm(np.ptp(pts, axis=0))) if len(pts) >= 2 else 0.0


def motion_cost(a: np.ndarray, b: np.ndarray, size: float) -> float:
    """Mean displacement of the paired joints seen in both bodies, in body sizes."""
    both = (a[list(PAIRED), 2] >= VISIBLE) & (b[list(PAIRED), 2] >= VISIBLE)
    if not both.any() or size <= 0:
        return 0.0
    idx = np.asarray(PAIRED)[both]
    return float(np.linalg.norm(a[idx, :2] - b[idx, :2], axis=1).mean() / size)


def face_conflict(body: np.ndarray, face: np.ndarray) -> bool:
    """True when the body's eye labels are the mirror of the face landmarks' eyes."""
    if (body[[R_EYE, L_EYE], 2] < VISIBLE).any():
        return False
    r, l = face[FACE_R_EYE], face[FACE_L_EYE]
    if (r[:, 2] < VISIBLE).any() or (l[:, 2] < VISIBLE).any():
        return False
    fr, fl = r[:, :2].mean(0), l[:, :2].mean(0)
    as_is = np.linalg.norm(body[R_EYE, :2] - fr) + np.linalg.norm(body[L_EYE, :2] - fl)
    swapped = np.linalg.norm(body[R_EYE, :2] - fl) + np.linalg.norm(body[L_EYE, :2] - fr)
    return bool(swapped < 0.5 * as_is)


def choose_sides(bodies: list[np.ndarray], faces: list[np.ndarray]) -> np.ndarray:
    """[T] bool: which frames of one person's track to mirror (Viterbi over keep / mirror)."""
    n = len(bodies)
    cands = [(b, b[list(MIRROR_BODY)]) for b in bodies]
    sizes = [max(_size(b), 1e-6) for b in bodies]
    unary = np.zeros((n, 2))
    for t in range(n):
        unary[t, 1] = SWAP_COST
        if face_conflict(bodies[t], faces[t]):
            unary[t, 0] += FACE_CONFLICT
        elif face_conflict(cands[t][1], faces[t]):
            unary[t, 1] += FACE_CONFLICT
    total = unary[0].copy()
    back = np.zeros((n, 2), int)
    for t in range(1, n):
        size = (sizes[t] + sizes[t - 1]) / 2
        step = np.array([[motion_cost(cands[t - 1][i], cands[t][j], size) for j in (0, 1)] for i in (0, 1)])
        options = total[:, None] + step           # [previous state, state]
        back[t] = options.argmin(0)
        total = options.min(0) + unary[t]
    states = np.zeros(n, int)
    states[-1] = int(total.argmin())
    for t in range(n - 1, 0, -1):
        states[t - 1] = back[t, states[t]]
    return states.astype(bool)


def consistent_sides(frames: list[PoseFrame], track_list: list[list[tuple[int, int]]]) -> list[PoseFrame]:
    """Frames (copied where changed) with each track's left/right labelling made consistent."""
    out = list(frames)
    for track in track_list:
        if len(track) < 2:
            continue
        flip = choose_sides([frames[t].body[i] for t, i in track], [frames[t].face[i] for t, i in track])
        for (t, i), f in zip(track, flip):
            if not f:
                continue
            if out[t] is frames[t]:
                world = frames[t].world
                out[t] = PoseFrame(frames[t].width, frames[t].height, world=None if world is None else world.copy(),
                                   **{k: v.copy() for k, v in frames[t].parts().items()})
            frame = out[t]
            frame.body[i], frame.left_hand[i], frame.right_hand[i] = mirrored(
                frame.body[i].copy(), frame.left_hand[i].copy(), frame.right_hand[i].copy())
            if frame.world is not None:
                frame.world[i] = frame.world[i][list(MIRROR_BODY)]
    return out
