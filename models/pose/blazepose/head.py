"""Which face points the camera can see, from BlazePose's 3D world landmarks.

The landmark model scores nose, eyes and ears near 1.0 whether it sees the face or the back of the
head, but its world landmarks (metres around the hips, z pointing away from the camera) do turn
with the head: the nose lies in front of the ear line when the face is towards the camera and
behind it when the person shows their back. `facing` is the cosine between the ears→nose
direction and the direction towards the camera (1 = full face, 0 = profile, −1 = back of the head).

The nose, eyes and mouth are hidden once the nose is clearly behind the ear line: facing < −0.3.
On renders of a full turn (tests/test_pose_facing.py) the nose disappears between −0.02 and −0.21,
but real near-profiles with the nose still labelled reach −0.15 (COCO), so the threshold leaves a
margin; the far eye in a near-profile stays too (COCO labels it). Ears stay: a back view shows both.
"""
from __future__ import annotations

import numpy as np

NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = 0, 2, 5, 7, 8  # BlazePose-33 indices
FACE_HIDDEN_BELOW = -0.3
# nose, eye corners and centres, mouth corners
FACE_POINTS = (NOSE, 1, LEFT_EYE, 3, 4, RIGHT_EYE, 6, 9, 10)


def facing(world: np.ndarray) -> float:
    """Head facing from [33, 3] world landmarks: 1 towards the camera, −1 away (see module doc)."""
    forward = world[NOSE] - (world[LEFT_EAR] + world[RIGHT_EAR]) / 2
    norm = float(np.linalg.norm(forward))
    return float(-forward[2] / norm) if norm > 1e-9 else 0.0


def face_hidden(world: np.ndarray) -> bool:
    """True when the camera sees the back of the head."""
    return facing(world) < FACE_HIDDEN_BELOW
