"""A thin runner for TensorFlow-Lite models (MediaPipe's) on ai-edge-litert."""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import MarionetteError


class TFLiteModel:
    """Loads one .tflite file and runs it on float32 inputs; outputs keyed by tensor name.

    An interpreter is not thread-safe, so calls are serialised with a lock.
    """

    def __init__(self, path: str, num_threads: int | None = None):
        if not os.path.isfile(path):
            raise MarionetteError(f"TFLite model not found: {path}.",
                                  "Put the MediaPipe .tflite files into ComfyUI/models/mediapipe.")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:  # pragma: no cover - depends on the install
            raise MarionetteError("ai-edge-litert is not installed.",
                                  "pip install -r requirements.txt in the Marionette folder.") from e
        self.path = path
        self._interp = Interpreter(model_path=path, num_threads=num_threads or min(4, os.cpu_count() or 1))
        self._interp.allocate_tensors()
        self._inputs = self._interp.get_input_details()
        self._outputs = self._interp.get_output_details()
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._inputs[0]["shape"])

    @property
    def output_names(self) -> list[str]:
        return [d["name"] for d in self._outputs]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Runs the model; returns the outputs in the model's declared order."""
        with self._lock:
            for detail, array in zip(self._inputs, arrays):
                self._interp.set_tensor(detail["index"], np.ascontiguousarray(array, dtype=np.float32))
            self._interp.invoke()
            return [self._interp.get_tensor(d["index"]).copy() for d in self._outputs]
