"""Flow fields as colour images (the Middlebury colour code of Baker et al., as the DisPose/CMP
`flow_to_image` draws them): hue = direction on a 55-entry colour wheel (red, yellow, green, cyan,
blue, magenta segments of 15, 6, 4, 11, 13, 6 entries), saturation = magnitude / max_radius, with
vectors beyond max_radius darkened to 75 %. Zero motion is white.

Scale: by default each frame is divided by max(5, its largest magnitude), as the official function
does; `shared_scale` uses one such radius for the whole video (steadier previews), `max_radius` a
fixed one.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import MarionetteError

WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR
MIN_RADIUS = 5.0  # the official normalisation never divides by less than 5 px
UNKNOWN_FLOW = 1e7  # components beyond this (or NaN) are "unknown" and drawn black, as in flowlib


def colour_wheel() -> np.ndarray:
    """[55, 3] float RGB in 0..255: each segment ramps one channel with floor(255 * i / length)."""
    rows = []
    # (channel held at 255, channel ramping, ramp up?) for each segment, starting at red
    plan = ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True), (0, 2, False))
    for length, (held, ramped, rising) in zip(WHEEL_SEGMENTS, plan):
        ramp = np.floor(255 * np.arange(length) / length)
        block = np.zeros((length, 3))
        block[:, held] = 255
        block[:, ramped] = ramp if rising else 255 - ramp
        rows.append(block)
    return np.concatenate(rows)


def _colour(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised flow components [H, W] -> uint8 RGB [H, W, 3]."""
    wheel = colour_wheel() / 255
    n = len(wheel)
    radius = np.sqrt(u ** 2 + v ** 2)
    # 1-based position 1 .. n around the wheel, the fraction taken from it as the official code does
    # (so colours match to the last bit); a vector along +x with v = +0.0 lands on the red end (-pi)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1) + 1
    k0 = np.floor(position).astype(int)
    f = (position - k0)[..., None]
    colour = (1 - f) * wheel[k0 - 1] + f * wheel[k0 % n]
    inside = (radius <= 1)[..., None]
    colour = np.where(inside, 1 - radius[..., None] * (1 - colour), colour * 0.75)
    return np.floor(255 * colour).astype(np.uint8)


def flow_to_rgb(flow, max_radius: float | None = None, shared_scale: bool = False) -> np.ndarray:
    """Colour images uint8 [N, H, W, 3] of flows [N, 2, H, W] (or [2, H, W] -> [1, H, W, 3]); channel 0
    = dx, channel 1 = dy, any unit. Scale per frame (default), shared over frames, or `max_radius`."""
    f = flow.detach().float().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow, np.float64)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[1] != 2:
        raise MarionetteError(f"A flow field has shape [N, 2, H, W]; got {tuple(np.shape(flow))}.",
                              "Pass a motion field from the DisPose motion-field functions.")
    f = f.astype(np.float64)
    unknown = (np.isnan(f) | (np.abs(f) > UNKNOWN_FLOW)).any(1)
    f = np.where(unknown[:, None], 0.0, f)
    magnitude = np.sqrt((f ** 2).sum(1))
    if max_radius is not None:
        radii = np.full(len(f), float(max_radius))
    elif shared_scale:
        radii = np.full(len(f), max(MIN_RADIUS, float(magnitude.max(initial=0.0))))
    else:
        radii = np.maximum(MIN_RADIUS, magnitude.reshape(len(f), -1).max(1, initial=0.0))
    out = np.empty(f.shape[:1] + f.shape[2:] + (3,), np.uint8)
    for i, (frame, radius) in enumerate(zip(f, radii)):
        scale = radius + np.finfo(float).eps
        out[i] = _colour(frame[0] / scale, frame[1] / scale)
        out[i][unknown[i]] = 0
    return out
