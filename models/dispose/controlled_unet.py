"""The SVD UNet steered by DisPose's ControlNet, as a UNet callable for `models.svd.sampler.sample`.

DisPose keeps MimicMotion's loop and adds, for every UNet call (both CFG passes, as its batch of two
does), a ControlNet pass on the same inputs whose residuals go into the UNet's skips and mid block. The
per-frame control inputs travel through the sampler's `frame_inputs` and arrive cut to the window; slot 0
of every window is the anchor frame (the reference pose), which has no motion field of its own.

Per-frame inputs (F = sampled frames, reference slot included; H×W the video size):
    dense_flow, sparse_flow [F, 2, H, W]  pixel (dx, dy) reference -> frame; entry 0 is ignored
    points [F, 18, 2]                    keypoints as (x / W, y / H); entry 0 = the reference pose
    visible [F, 18] bool                 detected keypoints
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import MarionetteError
from .residuals import controlnet_residuals


class DisPoseUNet:
    """`unet` (PoseSVDUNet) driven by `controlnet` (DisPoseControlNet) at `strength`.

    `point_embeddings` [1, 18, C]: the reference's keypoint (DIFT) features, or None to run without the
    keypoint correspondence."""

    def __init__(self, unet: nn.Module, controlnet: nn.Module, video_size: tuple[int, int],
                 point_embeddings: torch.Tensor | None = None, strength: float = 1.0):
        if not strength >= 0:
            raise MarionetteError(f"Control strength must be >= 0, got {strength}.", "Use 1.0 (official).")
        self.unet, self.controlnet = unet, controlnet
        self.video_size = (int(video_size[0]), int(video_size[1]))
        self.point_embeddings = point_embeddings
        self.strength = float(strength)

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids, pose_features=None,
                 return_dict=False, dense_flow=None, sparse_flow=None, points=None, visible=None):
        dtype = next(self.controlnet.parameters()).dtype
        flows = [None if f is None else f[1:].unsqueeze(0).to(sample.device, dtype) for f in (dense_flow, sparse_flow)]
        point_features = None
        if self.point_embeddings is not None and points is not None:
            if visible is None:
                raise MarionetteError("Keypoints came without their visibility.", "Pass `visible` with `points`.")
            embeddings = self.point_embeddings.to(sample.device, dtype)
            point_features = self.controlnet.point_adapter(embeddings, points.to(sample.device, dtype),
                                                           visible.to(sample.device), self.video_size)
        residuals = self.controlnet(sample.to(dtype), timestep, encoder_hidden_states.to(dtype),
                                    added_time_ids.to(dtype), dense_flow=flows[0], sparse_flow=flows[1],
                                    point_features=point_features, strength=self.strength)
        with controlnet_residuals(self.unet, residuals):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                             added_time_ids=added_time_ids, pose_features=pose_features, return_dict=return_dict)
