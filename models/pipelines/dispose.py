"""DisPose's guidance as the SVD pipeline takes it: motion fields, keypoint correspondences, and the per-frame
ControlNet inputs cut from them for MimicMotion's sampled frames (anchor + driving frames)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MarionetteError


@dataclass
class MotionField:
    """DisPose's two fields for the driving frames, [N, 2, H, W] pixel (dx, dy) each."""
    dense: torch.Tensor
    sparse: torch.Tensor
    method: str  # "cmp" or "fallback"


@dataclass
class Correspondence:
    """The reference keypoints' DIFT features and every frame's target keypoints."""
    embeddings: torch.Tensor  # [1, 18, C]
    points: torch.Tensor      # [F, 18, 2] (x / W, y / H); frame 0 = the reference pose
    visible: torch.Tensor     # [F, 18] bool
    tiny: bool


@dataclass
class DisPoseGuidance:
    """What the SVD pipeline needs to steer MimicMotion with DisPose."""
    controlnet: nn.Module     # DisPoseControlNet
    tiny: bool                # the tiny random ControlNet (fits only the tiny test model)
    motion: MotionField
    strength: float
    correspondence: Correspondence | None = None


def frame_inputs(guidance: DisPoseGuidance, frames: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The sampler's per-frame ControlNet inputs for `frames` sampled frames (MimicMotion's anchor, which
    gets zero motion, + the driving frames)."""
    motion = guidance.motion
    if motion.dense.shape[0] != frames - 1:
        raise MarionetteError(f"The motion field has {motion.dense.shape[0]} frames for {frames - 1} pose frames.",
                              "Build the motion field from the same aligned poses as the pose images.")
    if tuple(motion.dense.shape[-2:]) != tuple(size):
        raise MarionetteError(f"The motion field is {motion.dense.shape[-1]}x{motion.dense.shape[-2]} but the video "
                              f"is {size[1]}x{size[0]}.", "Build it from the reference at the video size.")
    zero = torch.zeros_like(motion.dense[:1])
    inputs = {"dense_flow": torch.cat([zero, motion.dense]), "sparse_flow": torch.cat([zero, motion.sparse])}
    if guidance.correspondence is not None:
        inputs.update(points=guidance.correspondence.points, visible=guidance.correspondence.visible)
        if inputs["points"].shape[0] != frames:
            raise MarionetteError(f"The keypoint correspondence has {inputs['points'].shape[0] - 1} driving frames "
                                  f"for {frames - 1} pose frames.", "Build it from the same aligned poses.")
    return inputs
