"""A BodySequence made concrete: camera-space vertices and joints for every frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MarionetteError
from .types import BodySequence


@dataclass
class PosedSequence:
    vertices: np.ndarray          # [T, V, 3] camera space, metres
    body18: np.ndarray            # [T, 18, 3]
    hands: np.ndarray             # [T, 2, 21, 3]
    face: np.ndarray | None       # [T, 68, 3]


def pose_sequence(model, seq: BodySequence, chunk: int = 16) -> PosedSequence:
    """Runs the body model over the sequence in chunks and places every frame in camera space."""
    import torch

    from .model import to_camera
    if seq.model != model.name:
        raise MarionetteError(f"The body sequence was fitted with {seq.model}, not {model.name}.",
                              "Use the same body model for fitting and rendering.")
    parts = {"vertices": [], "body18": [], "hands": [], "face": []}
    betas = torch.from_numpy(seq.betas)
    expression = torch.from_numpy(seq.expression) if seq.expression.size else None
    with torch.no_grad():
        for start in range(0, seq.num_frames, chunk):
            pose = torch.from_numpy(seq.pose[start:start + chunk])
            shift = torch.from_numpy(seq.translation[start:start + chunk])
            out = model.forward(pose, betas, expression)
            place = lambda points: to_camera(points.reshape(len(pose), -1, 3), pose, shift)  # noqa: E731
            parts["vertices"].append(place(out.vertices).numpy())
            parts["body18"].append(place(out.body18).numpy())
            parts["hands"].append(place(out.hands).reshape(out.hands.shape).numpy())
            if out.face is not None:
                parts["face"].append(place(out.face).numpy())
    face = np.concatenate(parts["face"]) if parts["face"] else None
    return PosedSequence(np.concatenate(parts["vertices"]), np.concatenate(parts["body18"]),
                         np.concatenate(parts["hands"]), face)
