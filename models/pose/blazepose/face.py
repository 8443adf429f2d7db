"""Face mesh from the pose, reduced to the 68 iBUG points OpenPose / DWPose draw.

Facts from MediaPipe's graphs (face_landmark_cpu, tensors_to_face_landmarks, face_detection_front_
detections_to_roi, face_landmarks_to_roi, face_tracking):
- face_landmark.tflite: ROI resampled to 192² in [0, 1]; output 468 × (x, y, z) in crop pixels and
  a face flag that is a logit (sigmoid, gate at 0.5);
- the ROI a face detection gives: the box around its six keypoints (eyes, nose tip, mouth,
  ear tragions), rotated so right eye → left eye is horizontal, shifted by −0.1 along y, squared
  and scaled by 2.0. Here the pose landmarks provide those six points, so no face detector runs;
- the ROI from face landmarks: the box around all 468 points, rotated by mesh points 33 → 263
  (the outer eye corners), squared and scaled by 1.5; tracking keeps it while it stays within
  15°, 0.1 translation and 0.3 scale of the pose ROI and the landmarks stay inside that ROI
  shrunk by 20 %.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import roi as R
from .body import sigmoid
from .runner import load_model

LANDMARK_SIZE = 192
NUM_LANDMARKS = 468
PRESENCE_THRESHOLD = 0.5
TRACK_ROTATION_DEG, TRACK_TRANSLATION, TRACK_SCALE, TRACK_MARGIN = 15.0, 0.1, 0.3, -0.2
# the pose ROI can be too tight for a small or turned face (COCO-WholeBody faces of 30 px): a looser one is tried next
RETRY_SCALE = 1.5

# BlazePose-33 face points standing in for the face detector's keypoints.
POSE_NOSE, POSE_LEFT_EYE, POSE_RIGHT_EYE, POSE_LEFT_EAR, POSE_RIGHT_EAR = 0, 2, 5, 7, 8
POSE_MOUTH_LEFT, POSE_MOUTH_RIGHT = 9, 10
MESH_RIGHT_EYE_OUTER, MESH_LEFT_EYE_OUTER = 33, 263

# iBUG-68 (dlib / OpenPose face order; "right" is the subject's right, the image left for a
# face looking at the camera) → MediaPipe face-mesh vertex. Chosen on the canonical face mesh:
# jaw points evenly spaced along the face oval from the ear line to the chin; brows on their
# upper contour; eye and lip points on the lid / lip contours. Every left/right iBUG pair maps
# to a mirror pair of mesh vertices, and midline iBUG points to midline vertices.
IBUG68_FROM_MESH = (
    # jaw 0-16: subject's right ear line → chin (8) → left ear line
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # right brow 17-21 (outer → inner), left brow 22-26 (inner → outer)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge 27-30 (nasion → tip), nostril base 31-35 (right → left)
    168, 197, 195, 4, 98, 97, 2, 326, 327,
    # right eye 36-41 (outer corner, upper outer, upper inner, inner corner, lower inner, lower outer)
    33, 160, 158, 133, 153, 144,
    # left eye 42-47 (inner corner, upper inner, upper outer, outer corner, lower outer, lower inner)
    362, 385, 387, 263, 373, 380,
    # outer lips 48-59 (right corner, upper lip → left corner, lower lip back)
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # inner lips 60-67
    78, 81, 13, 311, 308, 402, 14, 178,
)

# iBUG-68 index of each point's mirror image (left ↔ right).
IBUG68_MIRROR = (
    tuple(range(16, -1, -1)) + tuple(range(26, 16, -1)) + (27, 28, 29, 30) + (35, 34, 33, 32, 31)
    + (45, 44, 43, 42, 47, 46) + (39, 38, 37, 36, 41, 40)
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55) + (64, 63, 62, 61, 60, 67, 66, 65)
)


@dataclass
class FaceResult:
    mesh: np.ndarray   # [468, 2] frame pixels
    presence: float    # face flag (probability)
    rect: R.Rect

    @property
    def ibug68(self) -> np.ndarray:
        return self.mesh[list(IBUG68_FROM_MESH)]


def rect_from_pose(pose_landmarks: np.ndarray) -> R.Rect:
    """ROI from the pose's eyes, nose, mouth and ears, shaped like a face detection's ROI."""
    p = pose_landmarks
    mouth = (p[POSE_MOUTH_LEFT] + p[POSE_MOUTH_RIGHT]) / 2.0
    keypoints = np.stack([p[POSE_RIGHT_EYE], p[POSE_LEFT_EYE], p[POSE_NOSE], mouth,
                          p[POSE_RIGHT_EAR], p[POSE_LEFT_EAR]])
    angle = R.rotation_towards(p[POSE_RIGHT_EYE], p[POSE_LEFT_EYE], 0.0)
    return R.transform_rect(R.bbox_rect(keypoints, angle), 2.0, shift_y=-0.1)


def rect_from_mesh(mesh: np.ndarray) -> R.Rect:
    angle = R.rotation_towards(mesh[MESH_RIGHT_EYE_OUTER], mesh[MESH_LEFT_EYE_OUTER], 0.0)
    return R.transform_rect(R.bbox_rect(mesh, angle), 1.5)


class FaceLandmarker:
    """face_landmark on a pose-derived ROI, refined once from its own mesh; tracks between frames."""

    def __init__(self, path: str, num_threads: int | None = None):
        self.model = load_model(path, LANDMARK_SIZE, 2, num_threads)
        self.previous: np.ndarray | None = None

    def reset(self) -> None:
        self.previous = None

    def mesh(self, image: np.ndarray, rect: R.Rect) -> FaceResult:
        outputs = self.model(R.crop(image, rect, LANDMARK_SIZE))
        raw = outputs[0].reshape(NUM_LANDMARKS, 3).astype(np.float64)
        flag = float(sigmoid(np.asarray(outputs[1]).reshape(-1)[0]))
        return FaceResult(R.project_to_frame(raw, rect, LANDMARK_SIZE), flag, rect)

    def __call__(self, image: np.ndarray, pose_landmarks: np.ndarray, track: bool = True) -> FaceResult | None:
        from_pose = rect_from_pose(pose_landmarks)
        result = None
        if track and self.previous is not None:
            tracked = rect_from_mesh(self.previous)
            if R.tracking_consistent(tracked, self.previous, from_pose, TRACK_ROTATION_DEG, TRACK_TRANSLATION,
                                   TRACK_SCALE, TRACK_MARGIN):
                result = self.mesh(image, tracked)
        if result is None or result.presence < PRESENCE_THRESHOLD:
            first = self.mesh(image, from_pose)
            if first.presence < PRESENCE_THRESHOLD:
                first = self.mesh(image, R.transform_rect(from_pose, RETRY_SCALE))
            # one pass on the mesh's own ROI centres and scales the face
            result = self.mesh(image, rect_from_mesh(first.mesh)) if first.presence >= PRESENCE_THRESHOLD else first
        found = result.presence >= PRESENCE_THRESHOLD
        self.previous = result.mesh if (track and found) else None
        return result if found else None
