"""COCO-WholeBody-133 keypoints (DWPose's output) mapped to Marionette's OpenPose layout.

COCO-WholeBody order: 0-16 COCO body, 17-22 feet, 23-90 face (68, iBUG order), 91-111 left
hand, 112-132 right hand. OpenPose-18 has a neck, which DWPose does not predict: like the
official DWPose/MimicMotion code, the neck is the mean of the two shoulders and is visible
(score 1) only if both shoulders score above 0.3. The feet are dropped.
"""
from __future__ import annotations

import numpy as np

from .types import BODY, FACE, HAND, VISIBLE

WHOLEBODY = 133
L_SHOULDER, R_SHOULDER = 5, 6
NECK = -1  # marker in OPENPOSE_FROM_COCO: computed from the shoulders

# OpenPose-18 index -> COCO-17 index (nose, neck, right arm, left arm, right leg, left leg, eyes, ears)
OPENPOSE_FROM_COCO = (0, NECK, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE_SLICE = slice(23, 23 + FACE)
LEFT_HAND_SLICE = slice(91, 91 + HAND)
RIGHT_HAND_SLICE = slice(112, 112 + HAND)

# the neck gets a unit score, as in the official code (its drawing alpha then follows the shoulders)
NECK_SCORE = 1.0


def neck_point(kpts: np.ndarray, scores: np.ndarray, threshold: float = VISIBLE) -> np.ndarray:
    """[P, 3] neck (x, y, score) from COCO shoulders; score 1 if both shoulders > threshold, else 0."""
    xy = (kpts[:, L_SHOULDER] + kpts[:, R_SHOULDER]) / 2.0
    both = (scores[:, L_SHOULDER] > threshold) & (scores[:, R_SHOULDER] > threshold)
    return np.concatenate([xy, np.where(both, NECK_SCORE, 0.0)[:, None]], axis=1)


def _hide_weak(part: np.ndarray, threshold: float) -> np.ndarray:
    """Keypoints at or below the visibility threshold become (0, 0, 0): missing."""
    weak = part[..., 2] <= threshold
    part[weak] = 0.0
    return part


def to_openpose(kpts: np.ndarray, scores: np.ndarray, threshold: float = VISIBLE) -> dict[str, np.ndarray]:
    """Whole-body keypoints [P,133,2] + scores [P,133] -> OpenPose parts, each [P, n, 3].

    Returns {"body": [P,18,3], "left_hand": [P,21,3], "right_hand": [P,21,3], "face": [P,68,3]}
    in the same pixel units as `kpts`; raw scores are kept, those <= threshold become 0 with xy 0.
    """
    kpts = np.asarray(kpts, np.float64).reshape(-1, WHOLEBODY, 2)
    scores = np.asarray(scores, np.float64).reshape(-1, WHOLEBODY)
    full = np.concatenate([kpts, scores[..., None]], axis=-1)
    people = len(full)
    body = np.zeros((people, BODY, 3))
    coco = [c for c in OPENPOSE_FROM_COCO if c != NECK]
    body[:, [i for i, c in enumerate(OPENPOSE_FROM_COCO) if c != NECK]] = full[:, coco]
    body[:, OPENPOSE_FROM_COCO.index(NECK)] = neck_point(kpts, scores, threshold)
    parts = {"body": body, "left_hand": full[:, LEFT_HAND_SLICE].copy(),
             "right_hand": full[:, RIGHT_HAND_SLICE].copy(), "face": full[:, FACE_SLICE].copy()}
    return {name: _hide_weak(part, threshold).astype(np.float32) for name, part in parts.items()}
