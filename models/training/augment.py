"""Crop-and-stretch: one window seen zoomed in, wider or taller than it was filmed.

A random crop of the frame, each side 1/stretch .. 1 of the frame's (drawn independently, so the person
also comes out wider or taller), resized back to the frame size, the same crop for every image of the
window: frames, reference, body renders and skeletons stay aligned. On a few hundred clips it shows the
model body widths, sizes and places in the frame its clips never had, so it has to follow the guidance
rather than remember each clip's person (measured: `vividpose/weights/TRAINING.md`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MarionetteError


def check_stretch(stretch: float) -> None:
    if not stretch >= 1.0:
        raise MarionetteError(f"stretch {stretch} is below 1.", "Use 1 (off) or more, e.g. 1.3.")


def crop_box(generator: torch.Generator, width: int, height: int, stretch: float) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) in pixels, drawn from `generator`; the whole frame at stretch 1."""
    check_stretch(stretch)
    u = torch.rand(4, generator=generator).tolist()
    w = max(1, round(width / (1.0 + u[0] * (stretch - 1.0))))
    h = max(1, round(height / (1.0 + u[1] * (stretch - 1.0))))
    return round(u[2] * (width - w)), round(u[3] * (height - h)), w, h


def crop_and_resize(images: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """uint8 images [..., H, W, C] -> the `box` crop resized (bilinear) back to H x W, uint8."""
    left, top, w, h = box
    height, width, channels = images.shape[-3:]
    if (left, top, w, h) == (0, 0, width, height):
        return images
    crop = images[..., top:top + h, left:left + w, :]
    flat = crop.reshape(-1, h, w, channels).permute(0, 3, 1, 2).float()
    resized = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(images.shape)
