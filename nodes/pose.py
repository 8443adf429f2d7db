"""DWPoseExtract: 2D whole-body pose for every frame of an IMAGE batch."""
from __future__ import annotations

import json

import numpy as np

from ..models.pose.draw import DRAW_STYLES, draw_frames as draw_pose_frames
from ..models.pose.keypoint_json import frames_to_pose_keypoint
from ..models.pose.smoothing import smooth_frames
from ..models.pose.types import PoseFrame
from ..models.vision.image import to_rgb_uint8
from .combos import DRAW_STYLE, POSE_BACKEND, Combo, validate
from .host import Progress, preview_ui, to_image_tensor
from .model_paths import mediapipe_dir, model_choices, require_model

SMOOTHING = Combo({"light": "Kalman smoother over the whole clip (no lag), gaps of 2 frames filled, one-frame "
                              "hand/face blips dropped; two thirds less jitter, error unchanged (measured)",
                   "strong": "smoother still (gaps of 4 frames filled), but may trail fast limbs",
                   "off": "every frame as the estimator found it"}, default="light")
YOLOX, DWPOSE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"
DWPOSE_SOURCE = "Hugging Face repo yzd-v/DWPose, the files MimicMotion and controlnet_aux use"

_estimators: dict = {}  # loaded once per configuration; ONNX/TFLite sessions are cheap to keep


def _embedded(hands: bool, face: bool):
    from ..models.pose.blazepose import BlazePoseEstimator, required_files
    key = ("embedded", hands, face)
    if key not in _estimators:
        _estimators[key] = BlazePoseEstimator(mediapipe_dir(required_files(hands, face)), hands=hands, face=face)
    return _estimators[key]


def _dwpose(det_name: str, pose_name: str):
    from ..models.pose.dwpose import DWPoseDetector
    det = require_model("dwpose", det_name, DWPOSE_SOURCE)
    pose = require_model("dwpose", pose_name, DWPOSE_SOURCE)
    key = ("dwpose", det, pose)
    if key not in _estimators:
        _estimators[key] = DWPoseDetector(det, pose)
    return _estimators[key]


def keep_parts(frame: PoseFrame, body: bool, hands: bool, face: bool) -> PoseFrame:
    """Zeroes the scores of the parts the user switched off."""
    parts = frame.parts()
    for name, on in (("body", body), ("left_hand", hands), ("right_hand", hands), ("face", face)):
        if not on:
            parts[name] = np.zeros_like(parts[name])
    return PoseFrame(frame.width, frame.height, world=frame.world, **parts)


def draw_frames(frames: list[PoseFrame], style: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Skeleton frames [F,H,W,3] in a node's draw style, at each frame's canvas size or `size` (w, h)."""
    renderer, options = DRAW_STYLES[DRAW_STYLE.key(style, "draw style")]
    width, height = size or (None, None)
    return draw_pose_frames(frames, renderer, width, height, **options)


class DWPoseExtract:
    DESCRIPTION = ("Finds the person in every frame and returns OpenPose-layout keypoints (body 18, hands, "
                   "face) as POSE_KEYPOINT (controlnet_aux format) plus rendered skeleton frames. "
                   "Backend 'blazepose' (embedded) needs no download; 'dwpose' uses yolox_l.onnx + "
                   "dw-ll_ucoco_384.onnx.")
    CATEGORY = "Marionette/Pose"
    FUNCTION = "extract"
    RETURN_TYPES = ("POSE_KEYPOINT", "IMAGE")
    RETURN_NAMES = ("pose_keypoint", "skeleton")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "One image or a batch of video frames."}),
                "backend": POSE_BACKEND.input(),
                "detect_body": ("BOOLEAN", {"default": True}),
                "detect_hands": ("BOOLEAN", {"default": True}),
                "detect_face": ("BOOLEAN", {"default": True}),
                "draw_style": DRAW_STYLE.input("Match the animation model that reads the skeleton."),
                "bbox_detector": (model_choices("dwpose", (YOLOX,)), {"default": YOLOX}),
                "pose_estimator": (model_choices("dwpose", (DWPOSE,)), {"default": DWPOSE}),
            },
            "optional": {
                "smoothing": SMOOTHING.input("Offline temporal smoothing of the whole clip."),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, backend=None, draw_style=None, smoothing=None):
        return validate(backend=(POSE_BACKEND, backend), draw_style=(DRAW_STYLE, draw_style),
                        smoothing=(SMOOTHING, smoothing))

    def extract(self, images, backend, detect_body, detect_hands, detect_face, draw_style,
                bbox_detector, pose_estimator, smoothing="light", unique_id=None):
        frames = to_rgb_uint8(images)
        if POSE_BACKEND.key(backend, "pose backend") == "blazepose":
            estimator = _embedded(detect_hands, detect_face)
        else:
            estimator = _dwpose(bbox_detector, pose_estimator)
        poses = estimator(frames, on_progress=Progress(len(frames), unique_id))
        poses = smooth_frames([keep_parts(p, detect_body, detect_hands, detect_face) for p in poses],
                              SMOOTHING.key(smoothing, "smoothing"))
        keypoints = frames_to_pose_keypoint(poses)
        skeleton = draw_frames(poses, draw_style)
        ui = preview_ui(skeleton, prefix="marionette_pose")
        ui["openpose_json"] = [json.dumps(keypoints)]
        ui["marionette_people"] = [int(sum(p.num_people > 0 for p in poses)), len(poses)]
        return {"ui": ui, "result": (keypoints, to_image_tensor(skeleton))}
