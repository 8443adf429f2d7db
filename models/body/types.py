"""The data every 3D body stage shares.

Conventions (all backends): metres; body space is SMPL's (x = the person's left, y up, the
person faces +z, root joint at the origin for zero translation); the camera is OpenCV's pinhole
(x right, y down, z forward, principal point at the image centre). A camera-space point is
`R(global_orient) · body_point + translation`, so a person facing the camera has a global
orientation of ~180° about x.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# SMPL's 24 body parts (semantic-map labels, Champ's palette order)
SMPL_PARTS = ("pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
              "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
              "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hand", "right_hand")


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; focal in pixels, principal point at the image centre."""
    focal: float
    width: int
    height: int

    def project(self, points: np.ndarray) -> np.ndarray:
        """Camera-space [..., 3] → pixels [..., 2] (continuous convention: image spans 0..W, 0..H)."""
        z = np.maximum(points[..., 2:3], 1e-6)
        return points[..., :2] / z * self.focal + np.array([self.width / 2, self.height / 2])


@dataclass
class BodySequence:
    """A fitted (or aligned) body over T frames; the value of the BODY_SEQUENCE socket.

    `pose` holds per-frame rotations in the backend's layout, axis-angle, global orientation first
    (`body_model.pose_dim` values). `betas` is the shape (SMPL-X betas, or Anny's phenotype vector),
    shared by all frames; `expression` is SMPL-X's (empty for Anny).
    """
    model: str                  # "anny" | "smplx"
    gender: str                 # "neutral" | "male" | "female" (SMPL-X file choice; Anny: informational)
    betas: np.ndarray           # [S]
    expression: np.ndarray      # [E] (E = 0 for Anny)
    pose: np.ndarray            # [T, P]
    translation: np.ndarray     # [T, 3] camera space
    camera: Camera
    frame_ok: np.ndarray = field(default=None)  # [T] bool: False where no person was seen (carried over)
    info: dict = field(default_factory=dict)    # fit diagnostics (losses, reprojection error px, …)
    keypoints: np.ndarray | None = None         # [T, 18, 3] the 2D body keypoints fitted (x, y, score; 0 = none)

    def __post_init__(self):
        self.betas = np.asarray(self.betas, np.float32).reshape(-1)
        self.expression = np.asarray(self.expression, np.float32).reshape(-1)
        self.pose = np.asarray(self.pose, np.float32).reshape(len(self.pose), -1)
        self.translation = np.asarray(self.translation, np.float32).reshape(-1, 3)
        if len(self.translation) != len(self.pose):
            raise ValueError("BodySequence: pose and translation disagree on the number of frames")
        if self.frame_ok is None:
            self.frame_ok = np.ones(len(self.pose), bool)
        self.frame_ok = np.asarray(self.frame_ok, bool).reshape(-1)
        if self.keypoints is not None:
            self.keypoints = np.asarray(self.keypoints, np.float32).reshape(len(self.pose), 18, 3)

    @property
    def num_frames(self) -> int:
        return len(self.pose)

    def with_(self, **changes) -> "BodySequence":
        return replace(self, **changes)
