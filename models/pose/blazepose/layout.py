"""BlazePose-33 → OpenPose body-18.

BlazePose and OpenPose both name sides from the person's point of view, so "left" maps to
"left". OpenPose's neck has no BlazePose counterpart: it is the mean of the two shoulders, with
the lower of their two scores. Eyes are the BlazePose eye centres (not the inner/outer corners),
ears the ear points.
"""
from __future__ import annotations

import numpy as np

from ..types import BODY

BLAZEPOSE_33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
    "left_foot_index", "right_foot_index",
)
NECK = -1  # marker in the table below: the shoulder mean

# OpenPose-18 index → BlazePose-33 index
OPENPOSE_FROM_BLAZEPOSE = (
    0,      # nose
    NECK,   # neck
    12, 14, 16,  # right shoulder, elbow, wrist
    11, 13, 15,  # left shoulder, elbow, wrist
    24, 26, 28,  # right hip, knee, ankle
    23, 25, 27,  # left hip, knee, ankle
    5, 2,   # right eye, left eye
    8, 7,   # right ear, left ear
)
LEFT_SHOULDER, RIGHT_SHOULDER = 11, 12
# (wrist, pinky, index) of each hand, for the hand ROI
LEFT_HAND_POINTS, RIGHT_HAND_POINTS = (15, 17, 19), (16, 18, 20)


def body18(xy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[33, 2] pixel coordinates and [33] scores → [18, 3] OpenPose body (x, y, score)."""
    if xy.shape[0] != len(BLAZEPOSE_33) or scores.shape[0] != len(BLAZEPOSE_33):
        raise ValueError(f"expected 33 BlazePose landmarks, got {xy.shape[0]} points / {scores.shape[0]} scores")
    out = np.zeros((BODY, 3), np.float32)
    for k, src in enumerate(OPENPOSE_FROM_BLAZEPOSE):
        if src == NECK:
            out[k, :2] = (xy[LEFT_SHOULDER] + xy[RIGHT_SHOULDER]) / 2.0
            out[k, 2] = min(scores[LEFT_SHOULDER], scores[RIGHT_SHOULDER])
        else:
            out[k, :2] = xy[src]
            out[k, 2] = scores[src]
    return out



def body18_world(world: np.ndarray) -> np.ndarray:
    """[33, 3] world landmarks → [18, 3] in OpenPose order (neck = the shoulder mean)."""
    if world.shape[0] != len(BLAZEPOSE_33):
        raise ValueError(f"expected 33 BlazePose world landmarks, got {world.shape[0]}")
    rows = [(world[LEFT_SHOULDER] + world[RIGHT_SHOULDER]) / 2.0 if src == NECK else world[src]
            for src in OPENPOSE_FROM_BLAZEPOSE]
    return np.stack(rows).astype(np.float32)
