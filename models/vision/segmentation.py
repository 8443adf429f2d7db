"""Person mask from MediaPipe's selfie segmentation model (selfie_segmentation.tflite, "general").

Facts from MediaPipe's selfie_segmentation_cpu graph (v0.10.14) and the model itself:
- input 1×256×256×3 RGB float in [0, 1]; the graph stretches the whole image to 256×256
  (ImageToTensorCalculator keep_aspect_ratio: false), so no letterbox by default;
- output 1×256×256×1 "activation_10": already a probability (the graph's
  TensorsToSegmentationCalculator uses activation NONE), 1 = person;
- the graph resizes the mask back to the image size (bilinear).
"""
from __future__ import annotations

import cv2
import numpy as np

from .image import check_rgb, letterbox, resize
from .tflite import TFLiteModel

INPUT_SIZE = 256


class PersonSegmenter:
    """`PersonSegmenter(path)(image uint8 [H,W,3]) -> float32 mask [H,W] in 0..1`.

    keep_aspect=True letterboxes instead of stretching (MediaPipe stretches; the letterbox keeps
    thin people from getting thinner in wide images, at the cost of fewer pixels on them).
    """

    def __init__(self, model_path: str, keep_aspect: bool = False, num_threads: int | None = None):
        self.model = TFLiteModel(model_path, num_threads)
        self.keep_aspect = keep_aspect

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = check_rgb(image)
        h, w = image.shape[:2]
        if self.keep_aspect:
            tensor, to_input = letterbox(image, (INPUT_SIZE, INPUT_SIZE))
        else:
            tensor = resize(image, (INPUT_SIZE, INPUT_SIZE))
        x = tensor.astype(np.float32)[None] / 255.0
        prob = self.model(x)[0].reshape(INPUT_SIZE, INPUT_SIZE)
        if self.keep_aspect:
            mask = to_input.inverse().warp(prob, (w, h))
        else:
            mask = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(mask, 0.0, 1.0).astype(np.float32)
