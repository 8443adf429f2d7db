"""Tiny random DisPose parts (no download): an SD1.5-shaped UNet / VAE / CLIP text encoder for the keypoint
correspondence, and a ControlNet that fits the tiny MimicMotion model and those SD features. For tests and
for trying graphs; they are untrained."""
from __future__ import annotations

import torch
from torch import nn

from ..core.seeding import seeded
from .controlnet import DisPoseControlNet, tiny_dispose_controlnet_config
from ..sd15.loader import SD15Configs, SD15Parts

# SD1.5's block layout at toy width: up_blocks[1] is a cross-attention block with an upsampler, 64 channels;
# GroupNorm with 32 groups as in SD1.5.
TINY_UNET = {"in_channels": 4, "out_channels": 4, "sample_size": 8, "block_out_channels": [32, 32, 64, 64],
             "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 32,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
# four levels (the 8x of SD1.5's VAE) with two resnets each (the LDM layout converters expect); 32 groups in
# every GroupNorm as in the LDM modules, so that ComfyUI's own modules can run the same weights
TINY_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 32, 32, 64],
            "layers_per_block": 2, "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215}
TINY_TEXT = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
             "layer_norm_eps": 1e-5, "projection_dim": 32}
FEATURE_CHANNELS = 64  # reversed(block_out_channels)[1]: the DIFT feature width of the tiny UNet


def tiny_configs() -> SD15Configs:
    return SD15Configs(dict(TINY_UNET), dict(TINY_VAE), dict(TINY_TEXT))


def tiny_modules(seed: int = 0) -> dict[str, nn.Module]:
    """Random tiny UNet2DConditionModel, AutoencoderKL and CLIPTextModel (float32, eval)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with seeded(seed):
        modules = {"unet": UNet2DConditionModel(**TINY_UNET), "vae": AutoencoderKL(**TINY_VAE),
                   "text_encoder": CLIPTextModel(CLIPTextConfig(**TINY_TEXT))}
        with torch.no_grad():  # diffusers zero-initialises nothing we read, but make every weight non-trivial
            for module in modules.values():
                for parameter in module.parameters():
                    parameter.add_(0.02 * torch.randn_like(parameter))
    return {name: module.eval().requires_grad_(False) for name, module in modules.items()}


def tiny_sd15(seed: int = 0, dtype: torch.dtype = torch.float32) -> SD15Parts:
    # plain nn.Module.to: diffusers' override warns about fp32-only modules, which these have none of
    modules = {name: nn.Module.to(module, dtype=dtype) for name, module in tiny_modules(seed).items()}
    return SD15Parts(modules["unet"], modules["vae"], modules["text_encoder"], dtype, "(tiny random SD1.5)")


def tiny_dispose_controlnet(seed: int = 0) -> DisPoseControlNet:
    """A tiny random ControlNet for the tiny MimicMotion model and the tiny SD1.5 features. Its zero-initialised
    projections get small random weights so that it visibly steers."""
    config = {**tiny_dispose_controlnet_config(), "point_embedding_channels": FEATURE_CHANNELS}
    with seeded(seed):
        model = DisPoseControlNet(**config)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1 and not parameter.any():
                    nn.init.normal_(parameter, std=0.05)
    return model.eval().requires_grad_(False)
