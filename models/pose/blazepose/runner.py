"""Loads one MediaPipe .tflite file and checks it is the model the pipeline expects."""
from __future__ import annotations

import os

from ...errors import MarionetteError
from ...vision.tflite import TFLiteModel


def load_model(path: str, input_size: int, num_outputs: int, num_threads: int | None = None) -> TFLiteModel:
    """A square-input model with `num_outputs` outputs; a clear error for any other file."""
    model = TFLiteModel(path, num_threads)
    shape = model.input_shape
    if shape != (1, input_size, input_size, 3) or len(model.output_names) != num_outputs:
        raise MarionetteError(
            f"{os.path.basename(path)} is not the expected MediaPipe model: input {shape}, "
            f"{len(model.output_names)} outputs (expected (1, {input_size}, {input_size}, 3), {num_outputs} outputs).",
            "Use the unmodified file from the mediapipe==0.10.14 wheel (mediapipe/modules/...).")
    return model
