"""Initialising VividPose's ReferenceNet from a user's Stable Diffusion 2.1 UNet (the paper's init).

Accepted: a diffusers UNet file (`unet/diffusion_pytorch_model[.fp16].safetensors` of
stabilityai/stable-diffusion-2-1[-base]) or the single-file release (`v2-1_512-ema-pruned.safetensors`,
`v2-1_768-ema-pruned.safetensors`, LDM names `model.diffusion_model.*`), converted with diffusers' own
converter. Filled strictly: every ReferenceNet tensor must come from the file and vice versa.
"""
from __future__ import annotations

import os

import torch

from ..core.checkpoints import load_state_dict_file
from ..core.configs import without_meta
from ..errors import MarionetteError
from .checkpoint import check_keys
from .model import VividPose

LDM_PREFIX = "model.diffusion_model."
FIX = ("Use Stable Diffusion 2.1's UNet: the diffusers file unet/diffusion_pytorch_model.safetensors of "
       "stabilityai/stable-diffusion-2-1(-base), or the single file v2-1_512-ema-pruned.safetensors.")


def sd21_unet_state_dict(path: str | os.PathLike, config: dict) -> dict[str, torch.Tensor]:
    """The UNet tensors of `path` in diffusers names (a single-file checkpoint is converted with `config`)."""
    state = load_state_dict_file(path)
    if any(k.startswith(LDM_PREFIX) for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
        unet = {k: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
        state = convert_ldm_unet_checkpoint(unet, without_meta(dict(config)))
    return state


def init_reference_net_from_sd21(model: VividPose, path: str | os.PathLike) -> VividPose:
    """Copy an SD2.1 UNet into `model.reference_net` (in place; also returned)."""
    net = model.reference_net
    state = sd21_unet_state_dict(path, net.config)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    name = os.path.basename(os.fspath(path))
    check_keys(expected, {k: tuple(v.shape) for k, v in state.items()}, name,
               "VividPose's SD2.1-layout ReferenceNet", FIX)
    dtype = next(net.parameters()).dtype
    with torch.no_grad():
        net.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model
