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
    """Runs the body model over the sequence in chunks and moves every frame by its translation."""
    import torch
    if seq.model != model.name:
        raise MarionetteError(f"The body sequence was fitted with {seq.model}, not {model.name}.",
                              "Use the same body model for fitting and rendering.")
    parts = {"vertices": [], "body18": [], "hands": [], "face": []}
    betas = torch.from_numpy(seq.betas)
    expression = torch.from_numpy(seq.expression) if seq.expression.size else None
    with torch.no_grad():
        for start in range(0, seq.num_frames, chunk):
            pose = torch.from_numpy(seq.pose[start:start + chunk])
            out = model.forward(pose, betas, expression)
            shift = seq.translation[start:start + chunk]
            parts["vertices"].append(out.vertices.numpy() + shift[:, None])
            parts["body18"].append(out.body18.numpy() + shift[:, None])
            parts["hands"].append(out.hands.numpy() + shift[:, None, None])
            if out.face is not None:
                parts["face"].append(out.face.numpy() + shift[:, None])
    face = np.concatenate(parts["face"]) if parts["face"] else None
    return PosedSequence(np.concatenate(parts["vertices"]), np.concatenate(parts["body18"]),
                         np.concatenate(parts["hands"]), face)
