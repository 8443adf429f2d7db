"""Tiny, randomly initialised SD1.5 ReferenceNet modules: the no-download path for tests and the demo.

They keep the released structure — four UNet levels with two layers each, so 16 reference-attention
blocks and 21 motion modules (mid block included) with 32-row `pe` tables, a VAE with 8x downsampling, a
CLIP vision tower with projection — at a few hundred thousand parameters, so whole graphs run on a CPU in
seconds. Every layer is random (the official zero-initialised `proj_out`/`conv_out` are not zeroed), so
each part changes the output. Untrained: what they make is noise shaped like a video.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.modules import finish
from ..core.seeding import seeded
from .refnet_checkpoints import RefNetBackbone
from .refnet_unet import build_denoising_unet, build_reference_unet, motion_config, sd15_unet_config

TINY_UNET = {"block_out_channels": [32, 32, 64, 64], "attention_head_dim": 2, "cross_attention_dim": 16,
             "norm_num_groups": 8}
TINY_MOTION = {"num_attention_heads": 2, "norm_num_groups": 8}
TINY_VAE = dict(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8)
SCALING_FACTOR = 0.18215  # sd-vae-ft-mse / SD1.5


def tiny_unet_config() -> dict:
    return {**sd15_unet_config(), **copy.deepcopy(TINY_UNET)}


def tiny_motion_config() -> dict:
    return {**motion_config(), **TINY_MOTION}


def tiny_backbone(seed: int = 0, dtype: torch.dtype = torch.float32) -> RefNetBackbone:
    """Tiny random denoising UNet3D and reference UNet, deterministic for `seed`."""
    with seeded(seed):
        denoiser = build_denoising_unet(tiny_unet_config(), tiny_motion_config())
        reference = build_reference_unet(tiny_unet_config())
    return RefNetBackbone(finish(denoiser, dtype), finish(reference, dtype), dtype, {})


def tiny_vae(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A tiny diffusers AutoencoderKL with SD's 8x downsampling and 4 latent channels."""
    from diffusers import AutoencoderKL
    with seeded(seed):
        vae = AutoencoderKL(**TINY_VAE, scaling_factor=SCALING_FACTOR)
    return finish(vae, dtype)


def tiny_image_encoder(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A tiny CLIPVisionModelWithProjection whose tokens fit the tiny UNet's cross-attention."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    with seeded(seed):
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**TINY_CLIP, projection_dim=TINY_UNET["cross_attention_dim"]))
    return finish(encoder, dtype)
