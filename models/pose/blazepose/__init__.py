"""The embedded default pose backend: MediaPipe BlazePose pose, hand and face landmark models
run with ai-edge-litert, with Marionette's own detection, ROI and landmark decoding, mapped
onto the OpenPose layout (body 18, hands 21 + 21, face 68)."""
from .estimator import MODEL_FILES, BlazePoseEstimator, required_files

__all__ = ["MODEL_FILES", "BlazePoseEstimator", "required_files"]
