"""Motions that provoke the 3D body stage, with their ground truth from the renderer.

- `spin_motion`: the actor turns on the spot about the vertical axis (a full turn by default), so
  the clip holds side and back views and the true facing changes smoothly;
- `pointing_motion`: the right arm points straight at the camera, sweeping a little, the case
  where 2D keypoints cannot tell "towards the camera" from "away from it".

Both return per-frame {bone: 3x3 rotation} dicts like `actor.procedural_motion`; `render_motion`
renders them with `clip.render_actor`.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import MarionetteError
from .actor import DRIVER, Phenotype, X, Z, _neutral, body_model, rotation
from .clip import SyntheticClip, render_actor
from .scene import Appearance

TOWARDS_CAMERA = np.array([0.0, -1.0, 0.0])   # the actor faces -Y; the camera looks along +Y


def _check_frames(frames: int) -> int:
    if not 1 <= int(frames) <= 1000:
        raise MarionetteError(f"frames={frames} is out of range.", "Use 1..1000 frames.")
    return int(frames)


def aim_rotation(bone: str, child: str, direction) -> np.ndarray:
    """The rotation (anny 'local-ref', world axes at rest) that turns the rest-pose segment from
    `bone`'s head to `child`'s head towards `direction` (world: x = the actor's left, y back, z up)."""
    body = body_model()
    rest = body.rest_heads[body.bone_id(child)] - body.rest_heads[body.bone_id(bone)]
    a = rest / np.linalg.norm(rest)
    b = np.asarray(direction, np.float64) / np.linalg.norm(direction)
    axis = np.cross(a, b)
    if np.linalg.norm(axis) < 1e-9:
        return np.eye(3)
    return rotation(axis, math.degrees(math.atan2(np.linalg.norm(axis), float(np.dot(a, b)))))


def spin_motion(frames: int, degrees: float = 360.0, start: float = 0.0) -> list[dict[str, np.ndarray]]:
    """A relaxed standing actor turning by `degrees` about the vertical (evenly over the clip, from
    `start` degrees; 0 = facing the camera, 180 = back to the camera). Turning is to the actor's left."""
    n = _check_frames(frames)
    out = []
    for i in range(n):
        pose: dict = {}
        _neutral(pose)
        pose["root"] = rotation(Z, start + degrees * i / max(n - 1, 1))
        out.append(pose)
    return out


def pointing_motion(frames: int, fps: float = 12.0, sweep: float = 15.0, raise_deg: float = 0.0,
                    seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The right arm (elbow straight) points at the camera, its aim circling `sweep` degrees around
    the camera direction once per 2 s; `raise_deg` tilts the aim up. The left arm hangs relaxed."""
    n = _check_frames(frames)
    phase = float(np.random.default_rng(seed).uniform(0.0, 2 * math.pi))
    out = []
    for i in range(n):
        angle = phase + 2 * math.pi * (i / fps) / 2.0
        tilt = math.radians(raise_deg + sweep * math.sin(angle))
        turn = math.radians(sweep * math.cos(angle))
        direction = rotation(Z, math.degrees(turn)) @ rotation(X, math.degrees(tilt)) @ TOWARDS_CAMERA
        pose: dict = {}
        _neutral(pose)
        pose["upperarm01.R"] = aim_rotation("upperarm01.R", "lowerarm01.R", direction)
        pose["lowerarm01.R"] = np.eye(3)
        out.append(pose)
    return out


def render_motion(poses: list[dict], motion: str, width: int = 512, height: int = 512, fps: float = 12.0,
                  phenotype: Phenotype = DRIVER, seed: int = 0, fill: float = 0.8) -> SyntheticClip:
    """Renders per-frame bone rotations (a static camera framing the whole clip) with ground truth."""
    return render_actor(phenotype, poses, width, height, fps, motion, Appearance.sample(seed), seed, fill)
