"""The SD VAE Champ and Moore-AnimateAnyone decode with: sd-vae-ft-mse, offline and strict.

Sources:
- the diffusers folder `sd-vae-ft-mse` (HF `stabilityai/sd-vae-ft-mse`: `config.json` +
  `diffusion_pytorch_model.safetensors` / `.bin`), or a parent folder with a `vae/` subfolder;
- a single file as ComfyUI's `models/vae` holds it: `vae-ft-mse-840000-ema-pruned.safetensors` (LDM names,
  converted with diffusers' own converter) or a diffusers-named state dict.
Any other tensor set (an SDXL or SD3 VAE, a whole checkpoint) is refused by count and name.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..core.checkpoints import load_state_dict_file
from ..core.configs import read_json, without_meta
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError
from ..sd15.loader import SD15_VAE_CONFIG

HF_REPO = "stabilityai/sd-vae-ft-mse"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.bin")
FIX = (f"Use sd-vae-ft-mse: the diffusers folder from Hugging Face '{HF_REPO}' in ComfyUI/models/diffusers (or "
       "models/vae), or vae-ft-mse-840000-ema-pruned.safetensors in ComfyUI/models/vae.")
LDM_MARKER = "encoder.down.0.block.0.conv1.weight"
IGNORED_PREFIXES = ("loss.", "model_ema.")  # training leftovers some LDM VAE files carry


def _build(config: dict) -> nn.Module:
    from diffusers import AutoencoderKL
    with torch.device("meta"):
        return AutoencoderKL.from_config(without_meta(config))


def load_sd_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> nn.Module:
    """AutoencoderKL (eval, no gradients, `dtype`) from a diffusers folder or a single file."""
    path = os.fspath(path)
    dtype = check_dtype(dtype, "VAE")
    if os.path.isdir(path):
        folder = os.path.join(path, "vae") if os.path.isdir(os.path.join(path, "vae")) else path
        config = read_json(os.path.join(folder, "config.json"), f"The VAE folder {folder} has no config.json.", FIX)
        weights = next((os.path.join(folder, n) for n in WEIGHT_NAMES if os.path.isfile(os.path.join(folder, n))), None)
        if weights is None:
            raise MarionetteError(f"The VAE folder {folder} has no weights ({', '.join(WEIGHT_NAMES)}).", FIX)
        return strict_fill(_build(config), load_state_dict_file(weights), "SD VAE (AutoencoderKL)", weights, FIX,
                           dtype)
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(IGNORED_PREFIXES)}
    name = os.path.basename(path)
    if LDM_MARKER in state:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        converted = convert_ldm_vae_checkpoint(state, without_meta(SD15_VAE_CONFIG))
        if len(converted) != len(state):  # the converter skips names it does not know
            raise MarionetteError(f"{name}: only {len(converted)} of its {len(state)} tensors belong to an SD1.x VAE; "
                                  "it is another model.", FIX)
        state = converted
    return strict_fill(_build(SD15_VAE_CONFIG), state, "SD VAE (AutoencoderKL)", name, FIX, dtype)
