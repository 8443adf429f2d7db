"""A tiny random VividPose for tests and the demo: every part of the real one, a few hundred thousand
parameters. Its zero convs and identity values are randomised so that the poses and the face matter
(a fresh model would ignore both exactly)."""
from __future__ import annotations

import torch
from torch import nn

from ..core.seeding import seeded
from .config import VividPoseConfig, tiny_config
from .model import VividPose, build_vividpose


def tiny_vividpose(seed: int = 0, config: VividPoseConfig | None = None, dtype: torch.dtype = torch.float32,
                   untouched: bool = False) -> VividPose:
    """Deterministic for `seed`. `untouched`: keep the training init (zero convs, zero identity values)."""
    with seeded(seed):
        model = build_vividpose(config or tiny_config())
        if not untouched:
            with torch.no_grad():
                for encoder in (model.pose_controller.render, model.pose_controller.skeleton):
                    nn.init.normal_(encoder.conv_out.weight, std=0.05)
                for name, parameter in model.unet.named_parameters():
                    if name.endswith("processor.id_to_v.weight"):
                        nn.init.normal_(parameter, std=0.05)
    return model.to(dtype).requires_grad_(False)
