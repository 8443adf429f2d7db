"""The body's global orientation over a clip: which way each frame faces, chosen for the whole clip.

Per frame, several turns about the body's vertical (a full circle) are each fitted to the torso
and head keypoints; then one hypothesis per frame is picked by dynamic programming (Viterbi) over

  data cost (reprojection of the torso and head)
  + facing cues: the face seen (nose or eyes found: the front half), the face not seen while the
    shoulders are (the back half), the 3D keypoints' own facing when a 3D prior is given
  + turning cost between consecutive frames (squared angle, per frame of gap)
  + for hypotheses fitted with the keypoints' left and right exchanged (detectors swap them on
    side and back views, for single frames or whole stretches): a small cost per swapped frame
    and per change between swapped and not.

Picking per frame alone lets a near-profile torso flip between a front and a back solution that
project alike (a jump of tens of degrees); the turning cost keeps the path continuous, the cues
keep it on the right side.
"""
from __future__ import annotations

import numpy as np

from . import fit_losses as L

# OpenPose body indices
NOSE, R_EYE, L_EYE, R_EAR, L_EAR = 0, 14, 15, 16, 17
SHOULDERS, HIPS = (2, 5), (8, 11)
FACE_SEEN = 0.3         # a nose or eye at least this confident shows the face
# OpenPose body order with left and right exchanged
SWAP_BODY = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)


def swap_permutation() -> np.ndarray:
    """[K] target rows with left and right exchanged: body points and the two hands (the face
    points keep their rows; a frame read as swapped ignores them, see swap_targets)."""
    hand = L.HANDS.stop - L.HANDS.start
    left = np.arange(L.HANDS.start, L.HANDS.start + hand // 2)
    right = left + hand // 2
    return np.concatenate([np.array(SWAP_BODY), right, left, np.arange(L.FACE_POINTS.start, L.KEYPOINTS)])


def swap_targets(xy: np.ndarray, conf: np.ndarray, world: np.ndarray | None, rows: np.ndarray) -> None:
    """Exchanges left and right in place in frames `rows` (face points dropped: a face read on a
    body whose sides were mixed up is not trusted)."""
    if not len(rows):
        return
    perm = swap_permutation()
    xy[rows] = xy[rows][:, perm]
    conf[rows] = conf[rows][:, perm]
    conf[np.ix_(rows, np.arange(L.FACE_POINTS.start, L.KEYPOINTS))] = 0.0
    if world is not None:
        world[rows] = world[rows][:, list(SWAP_BODY)]


def face_cues(targets: L.Targets) -> np.ndarray:
    """[T] +1 where the face is seen (the front half), -1 where both shoulders are seen but no nose,
    eye, ear or face point is (the back half), 0 where the keypoints do not say."""
    conf = targets.conf
    face_seen = (conf[:, [NOSE, R_EYE, L_EYE]] >= FACE_SEEN).any(1)
    head_any = (conf[:, [NOSE, R_EYE, L_EYE, R_EAR, L_EAR]] > 0).any(1) | (conf[:, L.FACE_POINTS] > 0).any(1)
    shoulders = (conf[:, list(SHOULDERS)] > 0).all(1)
    return np.where(face_seen, 1.0, np.where(shoulders & ~head_any, -1.0, 0.0))


def world_facing(world: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """From 3D keypoints [T, 18, 4] (camera axes): ([T] how much the torso faces the camera, -1..1;
    [T] confidence 0..1, 0 without shoulders and hips)."""
    if world is None:
        return np.zeros(0), np.zeros(0)
    p, s = world[..., :3].astype(np.float64), world[..., 3]
    across = (p[:, SHOULDERS[1]] - p[:, SHOULDERS[0]]) + (p[:, HIPS[1]] - p[:, HIPS[0]])   # left − right
    up = (p[:, SHOULDERS[0]] + p[:, SHOULDERS[1]]) - (p[:, HIPS[0]] + p[:, HIPS[1]])
    forward = np.cross(across, up)
    norm = np.linalg.norm(forward, axis=1)
    conf = s[:, list(SHOULDERS + HIPS)].min(1) * (norm > 1e-6)
    return -forward[:, 2] / np.maximum(norm, 1e-12), np.clip(conf, 0.0, 1.0)


def cue_costs(facing: np.ndarray, face: np.ndarray, world: tuple[np.ndarray, np.ndarray],
              face_weight: float, world_weight: float) -> np.ndarray:
    """[H, T] cost of each hypothesis' facing (-1..1, +1 = chest to the camera) against the cues:
    a hinge on the wrong half for the face cue, squared distance for the 3D keypoints' facing."""
    cost = face_weight * np.maximum(0.0, -face[None] * facing)
    value, conf = world
    if len(value):
        cost = cost + world_weight * conf[None] * (facing - value[None]) ** 2
    return cost


def rotation_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle (radians) between rotation matrices [..., 3, 3] (broadcast)."""
    trace = np.einsum("...ij,...ij->...", a, b)
    return np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))


def best_path(unary: np.ndarray, rotations: np.ndarray, gaps: np.ndarray, turn_weight: float,
              groups: np.ndarray | None = None, switch_cost: float = 0.0) -> np.ndarray:
    """Viterbi: [T] hypothesis index per frame minimising Σ unary[h_t, t] + turn_weight ·
    angle(R_{t-1}, R_t)² / gap_t (+ switch_cost where groups[h] changes). unary [H, T], rotations
    [H, T, 3, 3], gaps [T] frames since the previous frame (gaps[0] unused)."""
    h, t = unary.shape
    groups = np.zeros(h, np.int64) if groups is None else np.asarray(groups)
    switch = switch_cost * (groups[:, None] != groups[None, :])
    total = unary[:, 0].copy()
    back = np.zeros((h, t), np.int64)
    for i in range(1, t):
        angle = rotation_angle(rotations[:, i - 1][:, None], rotations[:, i][None])   # [from, to]
        step = total[:, None] + turn_weight * angle ** 2 / max(float(gaps[i]), 1.0) + switch
        back[:, i] = step.argmin(0)
        total = step.min(0) + unary[:, i]
    path = np.zeros(t, np.int64)
    path[-1] = int(total.argmin())
    for i in range(t - 1, 0, -1):
        path[i - 1] = back[path[i], i]
    return path
