"""DisPose's guidance: the motion fields and keypoint correspondences built from the reference and the aligned
poses, and the per-frame ControlNet inputs the SVD pipeline cuts from them for MimicMotion's sampled frames
(anchor + driving frames)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
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


def motion_field(frames: list, image: np.ndarray, method: str, cmp: nn.Module | None = None,
                 person_mask: torch.Tensor | None = None,
                 callback: Callable[[int, int], None] | None = None) -> MotionField:
    """DisPose's two fields for `frames` (PoseFrames: the reference pose, then the aligned driving poses)
    on the reference `image` [H, W, 3] float 0..1: the sparse field, and the dense one from CMP
    (`method="cmp"`, `callback(done, total)` per frame) or the embedded fallback (`"fallback"`, limited
    to `person_mask` [H, W] when given)."""
    from ..dispose.fallback_field import dense_motion_field_fallback
    from ..dispose.motion_field import dense_motion_field_cmp, sparse_motion_field
    height, width = int(image.shape[0]), int(image.shape[1])
    sparse = sparse_motion_field(frames, height, width)
    if method == "cmp":
        if cmp is None:
            raise MarionetteError("The CMP method needs the CMP network.", "Load ckpt_iter_42000.pth.tar, or use "
                                  "the fallback method.")
        dense = dense_motion_field_cmp(cmp, image, frames, callback=callback)
    elif method == "fallback":
        dense = dense_motion_field_fallback(frames, person_mask, height, width)
    else:
        raise MarionetteError(f"Unknown motion-field method {method!r}.", "Use 'cmp' or 'fallback'.")
    return MotionField(dense, sparse, method)


def keypoint_correspondence(sd15, image: torch.Tensor, frames: list, seed: int, ensemble: int,
                            tiny: bool = False, check: Callable[[], None] | None = None) -> Correspondence:
    """DIFT features of the reference `image` [H, W, 3] from SD1.5 (`sd15`: unet, vae, text_encoder,
    scaling_factor, already on the compute device), read at the reference keypoints of `frames[0]`;
    the other frames give each keypoint's target."""
    from ..dispose.dift import body_keypoints, dift_features, prompt_embedding, reference_point_embeddings
    height, width = int(image.shape[0]), int(image.shape[1])
    text = prompt_embedding(sd15.text_encoder)
    if check is not None:
        check()
    features = dift_features(sd15.unet, sd15.vae, text, image.permute(2, 0, 1).float(), ensemble=ensemble,
                             seed=seed, scaling_factor=sd15.scaling_factor)
    xy, visible = body_keypoints(frames)
    reference = reference_point_embeddings(features.cpu(), xy[0], visible[0], height=height, width=width)
    return Correspondence(reference.embeddings[None], torch.from_numpy(xy).float(), torch.from_numpy(visible),
                          tiny=tiny)
