"""The pose representation every Marionette stage shares.

A PoseFrame holds the people of one video frame in OpenPose layout: body 18 (OpenPose
order, neck = shoulder mean), 21 points per hand, 68 face points (iBUG order). Each
keypoint is (x, y, score) in pixels of a `width`×`height` canvas; score 0 means missing.
`world`, when the backend estimates it (the embedded one does), holds each person's body 18 in 3D:
metres around the hip centre, camera axes (x right, y down, z away from the camera), neck = the
shoulder mean; the same point's score in `body` says whether it was seen.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

BODY, HAND, FACE = 18, 21, 68
VISIBLE = 0.3  # DWPose / MimicMotion visibility threshold on keypoint scores

OPENPOSE_BODY = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
                 "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")


@dataclass
class PoseFrame:
    width: int
    height: int
    body: np.ndarray        # [P, 18, 3]
    left_hand: np.ndarray   # [P, 21, 3]
    right_hand: np.ndarray  # [P, 21, 3]
    face: np.ndarray        # [P, 68, 3]
    world: np.ndarray | None = None  # [P, 18, 3] metres (see the module doc), or None

    def __post_init__(self):
        for name, n in (("body", BODY), ("left_hand", HAND), ("right_hand", HAND), ("face", FACE)):
            a = np.asarray(getattr(self, name), dtype=np.float32).reshape(-1, n, 3)
            setattr(self, name, a)
        if self.world is not None:
            self.world = np.asarray(self.world, dtype=np.float32).reshape(-1, BODY, 3)
        if not (len(self.body) == len(self.left_hand) == len(self.right_hand) == len(self.face)):
            raise ValueError("PoseFrame parts disagree on the number of people")
        if self.world is not None and len(self.world) != len(self.body):
            raise ValueError("PoseFrame world points disagree with the body on the number of people")

    @property
    def num_people(self) -> int:
        return len(self.body)

    def person(self, i: int) -> "PoseFrame":
        s = slice(i, i + 1)
        return replace(self, body=self.body[s], left_hand=self.left_hand[s], right_hand=self.right_hand[s],
                       face=self.face[s], world=None if self.world is None else self.world[s])

    def parts(self) -> dict[str, np.ndarray]:
        return {"body": self.body, "left_hand": self.left_hand, "right_hand": self.right_hand, "face": self.face}

    def map_xy(self, fn) -> "PoseFrame":
        """New frame with fn applied to the xy of every visible keypoint (fn: [N,2] -> [N,2])."""
        out = {}
        for name, a in self.parts().items():
            a = a.copy()
            vis = a[..., 2] > 0
            if vis.any():
                a[vis, :2] = fn(a[vis, :2])
            out[name] = a
        return replace(self, **out)


def empty_frame(width: int, height: int, people: int = 0) -> PoseFrame:
    z = lambda n: np.zeros((people, n, 3), np.float32)  # noqa: E731
    return PoseFrame(width, height, z(BODY), z(HAND), z(HAND), z(FACE))
