"""Checking a ComfyUI IMAGE batch before it becomes a network's input."""
from __future__ import annotations

import torch

from ..errors import MarionetteError


def image_batch(images, what: str, source: str) -> torch.Tensor:
    """`images` as a float tensor [frames, H, W, 3] in [0, 1], or an error naming `what` they are
    (e.g. "Pose images") and `source`, where such frames come from."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise MarionetteError(f"{what} must be an IMAGE batch [frames, H, W, 3]; got shape {tuple(images.shape)}.",
                              f"Pass the {source} (RGB) as ComfyUI gives them.")
    if not images.is_floating_point():
        raise MarionetteError(f"{what} must be float in [0, 1]; got dtype {images.dtype}.",
                              "Divide 8-bit images by 255 first.")
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise MarionetteError(f"{what} must lie in [0, 1]; these span [{low:.3f}, {high:.3f}].",
                              "Pass ComfyUI IMAGE values (0..1); do not normalise them beforehand.")
    return images
