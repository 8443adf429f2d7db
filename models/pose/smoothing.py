"""Offline temporal smoothing of a known clip of PoseFrames.

A pose estimator sees one frame at a time, so its keypoints jitter by a few pixels between
near-identical frames, and hands or a face drop out for single frames. For a clip we have every
frame before drawing anything, so the filter may look both ways:

- **Kalman smoother (Rauch–Tung–Striebel), constant velocity**: each keypoint is a point moving at a
  slowly changing velocity, seen with noise; a forward Kalman pass and a backward pass give the
  best estimate from the whole clip (zero phase: no trailing skeleton, which a causal filter adds).
  Unlike a low-pass (we tried a forward-backward One-Euro filter first), it keeps steady motion
  intact, so slow real movement is not flattened. Positions are measured in body sizes (the
  person's median keypoint extent), so one setting fits 540p and 4K; the ratio of acceleration
  noise to measurement noise sets the strength.
- **Short-gap filling**: a keypoint missing for at most `max_gap` frames between two detections is
  interpolated (hands and face move with their wrist / nose anchor during the gap), scored by the
  weaker neighbour.
- **Left/right consistency** (sides.py): a swapped labelling for a frame or a stretch is undone
  where the swap makes the limbs jump, or contradicts the face landmarks.
- **Hysteresis for hands and face**: a hand or face seen in a single frame between absences is
  dropped unless its score is high (entering needs either two frames or a confident one).

People are followed from frame to frame by nearest body centre (relative to their size). The 3D
body (`PoseFrame.world`, where the backend gives it) is smoothed with the same settings.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import MarionetteError
from .sides import consistent_sides
from .types import VISIBLE, PoseFrame


@dataclass(frozen=True)
class Smoothing:
    acceleration: float  # variance of the velocity change per frame, (body sizes / frame²)²
    noise: float         # variance of a measured position, body sizes²
    max_gap: int         # longest run of missing frames that is filled
    blip_score: float    # a part seen in one isolated frame is kept only above this score


# Tuned on real photos under a slow synthetic camera move (tests/test_pose_smoothing.py: exact truth,
# real estimator jitter) and on 12 fps renders of fast motion (tests/test_pose_facing.py clips):
# "light" takes two thirds of the jitter off the former and lowers the error against the truth a little on
# both; "strong" takes 80 % off, but trails fast limbs (error +7 % on the fast renders).
LEVELS = {"off": None,
          "light": Smoothing(acceleration=1e-4, noise=1e-5, max_gap=2, blip_score=0.8),
          "strong": Smoothing(acceleration=1e-5, noise=1e-5, max_gap=4, blip_score=0.9)}
PART_ANCHORS = {"left_hand": ("body", 7), "right_hand": ("body", 4), "face": ("body", 0)}  # wrist, wrist, nose
MATCH_DISTANCE = 0.5  # a person continues a track when its centre moved less than this × its size
TRANSITION = np.array([[1.0, 1.0], [0.0, 1.0]])  # position += velocity each frame
# a point's measurement noise grows as its score falls (noise / score⁴, scores clipped to 0.3..1): a barely
# seen point follows its neighbours in time more than a confident one (measured: lower error on both sets)
WEIGHT_POWER = 4.0
UNKNOWN = 1e6  # variance of a state nothing is known about, body sizes²


def kalman_smooth(xy: np.ndarray, present: np.ndarray, scale: float, p: Smoothing,
                  scores: np.ndarray | None = None) -> np.ndarray:
    """RTS smoother of [T, N, D] points seen where present [T, N]; the D axes share the covariance.

    A point absent for more than max_gap frames starts afresh when it comes back."""
    t_len, n = present.shape
    z = xy / scale
    q = p.acceleration * np.array([[0.25, 0.5], [0.5, 1.0]])
    state = np.zeros((n, 2, xy.shape[-1]))  # [point, (position, velocity), axis]
    cov = np.zeros((n, 2, 2))
    last_seen = np.full(n, -10 ** 9)
    filtered, f_cov = np.zeros((t_len,) + state.shape), np.zeros((t_len, n, 2, 2))
    predicted, p_cov = np.zeros_like(filtered), np.zeros_like(f_cov)
    for t in range(t_len):
        state = np.einsum("ij,njk->nik", TRANSITION, state)
        cov = TRANSITION @ cov @ TRANSITION.T + q
        predicted[t], p_cov[t] = state, cov
        seen = present[t]
        fresh = seen & (t - last_seen > p.max_gap + 1)
        update = seen & ~fresh
        noise = p.noise if scores is None else p.noise / np.clip(scores[t], 0.3, 1.0) ** WEIGHT_POWER
        gain = cov[:, :, 0] / (cov[:, 0, 0] + noise)[:, None]          # [n, 2]
        innovation = z[t] - state[:, 0, :]                                 # [n, 2]
        state = np.where(update[:, None, None], state + gain[:, :, None] * innovation[:, None, :], state)
        cov = np.where(update[:, None, None], cov - gain[:, :, None] * cov[:, 0:1, :], cov)
        state[fresh, 0, :], state[fresh, 1, :] = z[t, fresh], 0.0
        cov[fresh] = np.diag([p.noise, 1.0])
        p_cov[t, fresh] = np.eye(2) * UNKNOWN  # no link to the frames before a fresh start
        last_seen[seen] = t
        filtered[t], f_cov[t] = state, cov
    out = filtered.copy()
    for t in range(t_len - 2, -1, -1):
        back = f_cov[t] @ TRANSITION.T @ np.linalg.inv(p_cov[t + 1])
        out[t] = filtered[t] + np.einsum("nij,njk->nik", back, out[t + 1] - predicted[t + 1])
    return np.where(present[..., None], out[:, :, 0, :] * scale, xy)


def fill_gaps(points: np.ndarray, max_gap: int, anchor: np.ndarray | None = None) -> np.ndarray:
    """[T, N, 3] with missing points (score < 0.3) interpolated across gaps of ≤ max_gap frames.

    With `anchor` ([T, 3], e.g. the wrist), points are interpolated relative to it, so a hand
    follows its wrist through the gap; frames where the anchor is missing are not filled."""
    out = points.copy()
    for n in range(points.shape[1]):
        seen = np.flatnonzero(points[:, n, 2] >= VISIBLE)
        for a, b in zip(seen[:-1], seen[1:]):
            if not 1 < b - a <= max_gap + 1:
                continue
            for t in range(a + 1, b):
                w = (t - a) / (b - a)
                if anchor is None:
                    xy = (1 - w) * points[a, n, :2] + w * points[b, n, :2]
                else:
                    if min(anchor[a, 2], anchor[b, 2], anchor[t, 2]) < VISIBLE:
                        continue
                    rel = (1 - w) * (points[a, n, :2] - anchor[a, :2]) + w * (points[b, n, :2] - anchor[b, :2])
                    xy = anchor[t, :2] + rel
                out[t, n] = (xy[0], xy[1], min(points[a, n, 2], points[b, n, 2]))
    return out


def drop_blips(points: np.ndarray, blip_score: float) -> np.ndarray:
    """A whole part (hand, face) seen in one frame with none seen before or after is removed
    unless its best score reaches `blip_score` (hysteresis: entering needs two frames or confidence)."""
    out = points.copy()
    seen = (points[..., 2] >= VISIBLE).any(axis=1)
    for t in np.flatnonzero(seen):
        before = t > 0 and seen[t - 1]
        after = t + 1 < len(seen) and seen[t + 1]
        if not before and not after and points[t, :, 2].max() < blip_score:
            out[t] = 0.0
    return out


def _centre_and_size(body: np.ndarray) -> tuple[np.ndarray, float] | None:
    vis = body[:, 2] >= VISIBLE
    if vis.sum() < 2:
        return None
    pts = body[vis, :2]
    return pts.mean(0), float(np.linalg.norm(np.ptp(pts, axis=0)))


def tracks(frames: list[PoseFrame]) -> list[list[tuple[int, int]]]:
    """People followed through the clip: each track lists (frame, person index)."""
    open_tracks: list[list[tuple[int, int]]] = []
    last: dict[int, tuple[np.ndarray, float]] = {}
    for t, frame in enumerate(frames):
        taken: set[int] = set()
        candidates = []
        for i in range(frame.num_people):
            cs = _centre_and_size(frame.body[i])
            for k, track in enumerate(open_tracks):
                if cs is not None and k in last and track[-1][0] == t - 1:
                    (c0, s0), (c1, s1) = last[k], cs
                    dist = np.linalg.norm(c1 - c0) / max(s0, s1, 1e-6)
                    if dist < MATCH_DISTANCE:
                        candidates.append((dist, k, i))
        matched: dict[int, int] = {}
        for dist, k, i in sorted(candidates):
            if k not in matched and i not in taken:
                matched[k] = i
                taken.add(i)
        for k, track in enumerate(open_tracks):
            if k in matched:
                track.append((t, matched[k]))
                cs = _centre_and_size(frame.body[matched[k]])
                if cs is not None:
                    last[k] = cs
        for i in range(frame.num_people):
            if i not in taken:
                open_tracks.append([(t, i)])
                cs = _centre_and_size(frame.body[i])
                if cs is not None:
                    last[len(open_tracks) - 1] = cs
    return open_tracks


def _smooth_track(parts: dict[str, np.ndarray], p: Smoothing) -> dict[str, np.ndarray]:
    body = fill_gaps(parts["body"], p.max_gap)
    sizes = [cs[1] for cs in (_centre_and_size(b) for b in body) if cs is not None]
    scale = float(np.median(sizes)) if sizes else 1.0
    out = {"body": body}
    for name in ("left_hand", "right_hand", "face"):
        part = drop_blips(parts[name], p.blip_score)
        out[name] = fill_gaps(part, p.max_gap, anchor=body[:, PART_ANCHORS[name][1]])
    for name, pts in out.items():
        present = pts[..., 2] >= VISIBLE
        pts = pts.copy()
        pts[..., :2] = kalman_smooth(pts[..., :2].astype(np.float64), present, max(scale, 1.0), p, pts[..., 2])
        out[name] = pts
    return out


def smooth_frames(frames: list[PoseFrame], level: str = "light") -> list[PoseFrame]:
    """The clip with every tracked person's keypoints smoothed (see module doc); 'off' returns it as is.

    Faint points (0 < score < 0.3) are left untouched; scores are kept except for filled points."""
    if level not in LEVELS:
        raise MarionetteError(f"Unknown smoothing level {level!r}.", f"Choose one of: {', '.join(LEVELS)}.")
    p = LEVELS[level]
    if p is None or len(frames) < 3:
        return list(frames)
    track_list = tracks(frames)
    frames = consistent_sides(frames, track_list)
    out = [replace(f, world=None if f.world is None else f.world.copy(), **{k: v.copy() for k, v in f.parts().items()})
           for f in frames]
    for track in track_list:
        if len(track) < 3:
            continue
        parts = {name: np.stack([getattr(frames[t], name)[i] for t, i in track]) for name in PART_ANCHORS | {"body": 0}}
        smoothed = _smooth_track(parts, p)
        if all(frames[t].world is not None for t, _ in track):
            world = np.stack([frames[t].world[i] for t, i in track]).astype(np.float64)
            size = float(np.median(np.linalg.norm(np.ptp(world, axis=1), axis=-1)))
            world = kalman_smooth(world, np.ones(world.shape[:2], bool), max(size, 1e-3), p)
            for j, (t, i) in enumerate(track):
                out[t].world[i] = world[j]
        for j, (t, i) in enumerate(track):
            for name, pts in smoothed.items():
                original = getattr(frames[t], name)[i]
                faint = (original[:, 2] > 0) & (original[:, 2] < VISIBLE) & (pts[j, :, 2] < VISIBLE)
                getattr(out[t], name)[i] = np.where(faint[:, None], original, pts[j])
    return out
