"""Hands from the pose, as MediaPipe Holistic does it (no palm detector).

Facts from MediaPipe's holistic graphs (hand_landmarks_left_and_right, hand_visibility_from_
hand_landmarks_from_pose, hand_detections_from_pose_to_rects_calculator, hand_landmarks_from_
pose_to_recrop_roi, hand_recrop_by_roi, hand_tracking, hand_landmarks_to_roi, hand_landmark_cpu):
- a hand is looked at only when the pose wrist visibility exceeds 0.1;
- ROI from the pose: centre (2·index + pinky) / 3, half-side |centre − wrist|, rotated so the
  wrist→centre vector points up; scaled by 2.7 with a shift of −0.1 along the rect's y;
- hand_recrop (256² in [0, 1]) returns 2 points: a square centred on the first, half-side the
  distance to the second, rotated to −90°, shifted by −0.1 along y, is the refined ROI;
- hand_landmark_full (224² in [0, 1]) returns 21 × (x, y, z) in crop pixels and a hand flag
  that is already a probability (gate at 0.5);
- tracking: the ROI from the previous frame's hand landmarks (rotation from the wrist towards
  the index/middle/ring knuckles, tight rotated box of 12 palm-side points, scale 2.0,
  shift −0.1) is kept while it stays within 40°, 0.2 translation and 0.4 scale of the recrop
  ROI and the previous landmarks stay inside the recrop ROI shrunk by 10 %. (Unlike MediaPipe,
  a tracked ROI that loses the hand is retried with the recrop ROI in the same frame.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...vision.tflite import TFLiteModel
from . import roi as R
from .runner import load_model

RECROP_SIZE = 256
LANDMARK_SIZE = 224
NUM_LANDMARKS = 21
WRIST_VISIBILITY = 0.1
PRESENCE_THRESHOLD = 0.5
PALM_POINTS = (0, 1, 2, 3, 5, 6, 9, 10, 13, 14, 17, 18)
TRACK_ROTATION_DEG, TRACK_TRANSLATION, TRACK_SCALE, TRACK_MARGIN = 40.0, 0.2, 0.4, -0.1


@dataclass
class HandResult:
    landmarks: np.ndarray  # [21, 2] frame pixels
    presence: float        # hand flag (probability)
    rect: R.Rect


def rect_from_pose(wrist: np.ndarray, pinky: np.ndarray, index: np.ndarray) -> R.Rect:
    """The coarse hand ROI from the three pose landmarks of one hand."""
    middle = (2.0 * index + pinky) / 3.0
    side = 2.0 * float(np.hypot(*(middle - wrist)))
    rect = R.Rect(float(middle[0]), float(middle[1]), side, side, R.rotation_towards(wrist, middle, 90.0))
    return R.transform_rect(rect, 2.7, shift_y=-0.1)


def rect_from_recrop(points: np.ndarray) -> R.Rect:
    """The refined ROI from hand_recrop's two alignment points (frame pixels)."""
    return R.transform_rect(R.alignment_rect(points[0], points[1], -90.0), 1.0, shift_y=-0.1)


def rect_from_landmarks(landmarks: np.ndarray) -> R.Rect:
    """The tracking ROI from a previous frame's 21 hand landmarks."""
    # MediaPipe names these "PIP" but indexes its 12-point palm subset: they are the MCP joints
    towards = ((landmarks[5] + landmarks[13]) / 2.0 + landmarks[9]) / 2.0
    angle = R.rotation_towards(landmarks[0], towards, 90.0)
    tight = R.rotated_bbox_rect(landmarks[list(PALM_POINTS)], angle)
    return R.transform_rect(tight, 2.0, shift_y=-0.1)


class HandLandmarker:
    """hand_recrop + hand_landmark_full for one hand, with landmark tracking between frames."""

    def __init__(self, recrop: TFLiteModel, model: TFLiteModel):
        self.recrop, self.model = recrop, model  # both hands share the loaded models
        self.previous: np.ndarray | None = None  # last frame's landmarks

    @classmethod
    def pair(cls, recrop_path: str, landmark_path: str,
             num_threads: int | None = None) -> tuple["HandLandmarker", "HandLandmarker"]:
        """Trackers for the left and the right hand over one copy of the models."""
        recrop = load_model(recrop_path, RECROP_SIZE, 1, num_threads)
        model = load_model(landmark_path, LANDMARK_SIZE, 4, num_threads)
        return cls(recrop, model), cls(recrop, model)

    def reset(self) -> None:
        self.previous = None

    def refine_rect(self, image: np.ndarray, coarse: R.Rect) -> R.Rect:
        raw = self.recrop(R.crop(image, coarse, RECROP_SIZE))[0].reshape(-1, 2)[:2]
        return rect_from_recrop(R.project_to_frame(raw.astype(np.float64), coarse, RECROP_SIZE))

    def landmarks(self, image: np.ndarray, rect: R.Rect) -> HandResult:
        outputs = self.model(R.crop(image, rect, LANDMARK_SIZE))
        raw = outputs[0].reshape(NUM_LANDMARKS, 3).astype(np.float64)
        flag = float(np.asarray(outputs[1]).reshape(-1)[0])
        return HandResult(R.project_to_frame(raw, rect, LANDMARK_SIZE), flag, rect)

    def __call__(self, image: np.ndarray, wrist: np.ndarray, pinky: np.ndarray, index: np.ndarray,
                 track: bool = True) -> HandResult | None:
        """One hand from its pose landmarks; None when the hand is not found."""
        recrop = self.refine_rect(image, rect_from_pose(wrist, pinky, index))
        result = None
        if track and self.previous is not None:
            tracked = rect_from_landmarks(self.previous)
            if R.tracking_consistent(tracked, self.previous, recrop, TRACK_ROTATION_DEG, TRACK_TRANSLATION,
                                     TRACK_SCALE, TRACK_MARGIN):
                result = self.landmarks(image, tracked)
        if result is None or result.presence < PRESENCE_THRESHOLD:
            result = self.landmarks(image, recrop)  # untracked, or the tracked ROI lost the hand
        found = result.presence >= PRESENCE_THRESHOLD
        self.previous = result.landmarks if (track and found) else None
        return result if found else None
