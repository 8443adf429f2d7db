"""Tiny, randomly initialised SVD animation models: the no-download path for tests and the demo.

They have every part the real models have (SVD UNet with the PoseNet hook and, for StableAnimator, the
ID adapter; temporal-decoder VAE; CLIP vision encoder with projection; PoseNet) at a few thousand
parameters, so whole workflows run on a CPU in seconds. They are untrained: what they produce is noise
shaped like a video, never an animation.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.modules import finish
from ..core.seeding import seeded
from ..errors import MarionetteError
from ..mimicmotion.pose_net import PoseNet
from ..svd.base import SVDBase
from ..svd.conditioning import CLIP_MEAN, CLIP_STD
from ..svd.configs import tiny_unet_config
from .svd_models import build_animation_unet

TINY_VARIANTS = ("mimicmotion", "stableanimator")
# Four VAE levels: three 2x downsamplings, the 8x of SVD's VAE, so pose images line up with the latent
# grid exactly as with the real model. 32 channels because the VAE's GroupNorm uses 32 groups.
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                layers_per_block=1)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=224, patch_size=32)
SVD_SCALING_FACTOR = 0.18215


def _random_pose_net(out_channels: int) -> PoseNet:
    """A PoseNet whose output projection is random too (the official init zeroes it, which would make
    the tiny model ignore the poses entirely)."""
    net = PoseNet(out_channels)
    with torch.no_grad():
        nn.init.normal_(net.final_proj.weight, std=0.02)
        net.scale.fill_(1.0)
    return net


def tiny_animation_model(variant: str = "mimicmotion", seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> SVDBase:
    """An `SVDBase` of tiny random modules for `variant` ('mimicmotion' or 'stableanimator'), with its
    UNet and PoseNet in place (`unet_loaded=True`), deterministic for a given `seed`."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    if variant not in TINY_VARIANTS:
        raise MarionetteError(f"Unknown animation model '{variant}'.", f"Use one of: {', '.join(TINY_VARIANTS)}.")
    config = tiny_unet_config()
    with seeded(seed):
        unet = build_animation_unet(config, variant)
        vae = AutoencoderKLTemporalDecoder(**TINY_VAE, scaling_factor=SVD_SCALING_FACTOR)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP,
                                                              projection_dim=config["cross_attention_dim"]))
        pose_net = _random_pose_net(config["block_out_channels"][0])
    return SVDBase(unet=finish(unet, dtype), vae=finish(vae, dtype), image_encoder=finish(clip, dtype),
                   vae_scaling_factor=SVD_SCALING_FACTOR, dtype=dtype, unet_variant=variant, unet_config=config,
                   clip_mean=CLIP_MEAN, clip_std=CLIP_STD, scheduler_config={}, folder="(tiny random model)",
                   unet_loaded=True, pose_net=finish(pose_net, dtype), files={})
