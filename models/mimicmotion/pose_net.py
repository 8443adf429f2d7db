"""PoseNet: the small conv encoder that turns rendered skeletons into a residual for the SVD UNet.

StableAnimator (`animation/modules/pose_net.py`) and MimicMotion (`mimicmotion/modules/pose_net.py`)
ship the same network: identical layers, names, initialisation and forward (only the base class
differs, diffusers `ModelMixin` vs `nn.Module`, which adds no parameters). One class serves both:
- StableAnimator `Animation/pose_net.pth`: 19 float32 tensors, no prefix;
- MimicMotion `MimicMotion_1(-1).pth`: the same 19 tensors under `pose_net.` (fp16), and kijai's
  `mimic_motion_pose_net.safetensors`: the same 19 without prefix (fp16).

Layers (`conv_layers` is a Sequential: convs at even indices, SiLU after every conv at odd ones):
    0: 3->3 k3 s1 p1 | 2: 3->16 k4 s2 p1 | 4: 16->16 k3 s1 p1 | 6: 16->32 k4 s2 p1
    8: 32->32 k3 s1 p1 | 10: 32->64 k4 s2 p1 | 12: 64->64 k3 s1 p1 | 14: 64->128 k3 s1 p1
then `final_proj` (1x1 conv 128->320) and a learnable scalar `scale` (shape [1]) that multiplies the
whole output. Three stride-2 convs: a pose image of H x W gives a [320, H/8, W/8] map, which the UNet
adds right after its `conv_in` (before the first skip connection).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core.images import image_batch
from ..errors import MarionetteError

# (in, out, kernel, stride) of the eight convs; padding is always 1.
CONV_SPECS = ((3, 3, 3, 1), (3, 16, 4, 2), (16, 16, 3, 1), (16, 32, 4, 2),
              (32, 32, 3, 1), (32, 64, 4, 2), (64, 64, 3, 1), (64, 128, 3, 1))
DOWNSCALE = 8  # three stride-2 convs
LATENT_CHANNELS = 320  # SVD UNet block_out_channels[0]
INITIAL_SCALE = 2.0


class PoseNet(nn.Module):
    """Pose images [N, 3, H, W] (or [B, F, 3, H, W]) in [-1, 1] -> [N, out_channels, H/8, W/8]."""

    def __init__(self, out_channels: int = LATENT_CHANNELS):
        super().__init__()
        layers = []
        for c_in, c_out, kernel, stride in CONV_SPECS:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=stride, padding=1), nn.SiLU()]
        self.conv_layers = nn.Sequential(*layers)
        self.final_proj = nn.Conv2d(CONV_SPECS[-1][1], out_channels, kernel_size=1)
        self.scale = nn.Parameter(torch.full((1,), INITIAL_SCALE))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: He-normal convs with zero bias, and a zero `final_proj`, so a
        freshly built PoseNet adds nothing to the UNet until trained."""
        for layer in self.conv_layers:
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels
                layer.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
                layer.bias.zero_()
        self.final_proj.weight.zero_()
        self.final_proj.bias.zero_()
        self.scale.fill_(INITIAL_SCALE)

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        if poses.ndim == 5:  # [B, F, 3, H, W]: frames of all videos in one batch
            poses = poses.flatten(0, 1)
        if poses.ndim != 4 or poses.shape[1] != 3:
            raise MarionetteError(
                f"PoseNet needs pose images shaped [frames, 3, H, W]; got {tuple(poses.shape)}.",
                "Convert IMAGE batches with pose_images_to_input() first.")
        return self.final_proj(self.conv_layers(poses)) * self.scale

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "PoseNet":
        """A PoseNet holding exactly these 19 tensors (strict load), in their dtype.

        Pass the bare keys (`conv_layers.0.weight`, ..., `scale`); strip MimicMotion's `pose_net.`
        prefix first (`checkpoints.split_mimicmotion`)."""
        weight = state_dict.get("final_proj.weight")
        out_channels = weight.shape[0] if isinstance(weight, torch.Tensor) and weight.ndim == 4 else LATENT_CHANNELS
        with torch.device("meta"):
            net = cls(out_channels)
        try:
            net.load_state_dict(state_dict, strict=True, assign=True)
        except RuntimeError as error:
            raise MarionetteError(
                f"These weights do not fit the PoseNet: {_first_lines(str(error))}",
                "Use StableAnimator's Animation/pose_net.pth, MimicMotion's checkpoint (its pose_net.* part) "
                "or mimic_motion_pose_net.safetensors.") from error
        return net


def pose_images_to_input(images_0_1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ComfyUI IMAGE batch [F, H, W, 3] in [0, 1] -> PoseNet input [F, 3, H, W] in [-1, 1].

    Both official pipelines feed the 8-bit RGB skeleton renders as `pixels / 127.5 - 1` (MimicMotion
    `inference.py` preprocess; StableAnimator `InferenceAnimationPipeline.__call__`), which for
    pixels/255 in [0, 1] is exactly `2 x - 1`. The poses must already be at the video's size
    (StableAnimator resizes them to (W, H) when loading; MimicMotion draws them at that size).
    """
    images = image_batch(images_0_1, "Pose images", "rendered skeleton frames")
    height, width = images.shape[1:3]
    if height % DOWNSCALE or width % DOWNSCALE:
        raise MarionetteError(
            f"Pose images are {width}x{height}; PoseNet needs both sides to be multiples of {DOWNSCALE} "
            "so its output matches the latent grid.",
            "Render or resize the poses to the output video size (a multiple of 64 is safest).")
    # float32 arithmetic as in the official code, then the working dtype
    return (images.float() * 2 - 1).to(dtype).permute(0, 3, 1, 2).contiguous()


def _first_lines(text: str, count: int = 4) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:count])
