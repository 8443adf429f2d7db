"""The VAE of the SD1.5 ReferenceNet family: both Champ and Moore-AnimateAnyone use `sd-vae-ft-mse`
(HF stabilityai/sd-vae-ft-mse), the SD1.5 VAE architecture with a fine-tuned decoder, scaling factor
0.18215. The reference latent is `encode(ref · 2 − 1).latent_dist.mean · 0.18215` (no sampling).

Sources (offline, strict, diffusers `AutoencoderKL`):
- a diffusers folder (`config.json` + `diffusion_pytorch_model(.fp16).safetensors` or `.bin`), or its parent
  with a `vae/` subfolder (Champ's bundle and Moore's `pretrained_weights/sd-vae-ft-mse`);
- a single file as ComfyUI's `models/vae` holds it: `vae-ft-mse-840000-ema-pruned.safetensors` / `.ckpt`
  (LDM naming, converted with diffusers' own converter) or a diffusers-named file.
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
from .loader import SD15_VAE_CONFIG

HF_REPO = "stabilityai/sd-vae-ft-mse"
FIX = (f"Use sd-vae-ft-mse: the diffusers folder of Hugging Face '{HF_REPO}', or "
       "vae-ft-mse-840000-ema-pruned.safetensors (Hugging Face 'stabilityai/sd-vae-ft-mse-original') in "
       "ComfyUI/models/vae.")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
LDM_MARKERS = ("encoder.down.", "decoder.up.", "encoder.mid.attn_1.")
UNUSED_PREFIXES = ("loss.", "model_ema.")  # training-only tensors some LDM files keep
STRUCTURE = ("latent_channels", "block_out_channels", "layers_per_block", "in_channels", "out_channels")


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float16, *, config: dict | None = None) -> nn.Module:
    """An AutoencoderKL (eval, no gradients) from a diffusers folder or a single file. `config` replaces the
    SD1.5 VAE config of single files (tests pass tiny ones); folders bring their own."""
    path = os.fspath(path)
    dtype = check_dtype(dtype, "VAE")
    if os.path.isdir(path):
        folder = os.path.join(path, "vae") if os.path.isdir(os.path.join(path, "vae")) else path
        config = without_meta(read_json(os.path.join(folder, "config.json"), f"The VAE folder {folder} has no "
                                        "config.json.", FIX))
        weights = next((os.path.join(folder, n) for n in WEIGHT_NAMES if os.path.isfile(os.path.join(folder, n))), None)
        if weights is None:
            raise MarionetteError(f"The VAE folder {folder} has no weights ({', '.join(WEIGHT_NAMES)}).", FIX)
        return _fill(config, load_state_dict_file(weights), weights, dtype)
    state = load_state_dict_file(path)
    return _fill(dict(config or SD15_VAE_CONFIG), _diffusers_names(state, path, config or SD15_VAE_CONFIG), path, dtype)


def _diffusers_names(state: dict, path: str, config: dict) -> dict[str, torch.Tensor]:
    name = os.path.basename(path)
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in state):
        raise MarionetteError(f"{name} is a whole Stable Diffusion checkpoint, not a VAE file.", FIX)
    state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
    if not any(k.startswith(LDM_MARKERS) for k in state):
        return state  # diffusers naming already; the strict fill checks every name
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    converted = convert_ldm_vae_checkpoint(state, without_meta(config))
    if len(converted) != len(state):
        raise MarionetteError(f"Only {len(converted)} of the {len(state)} tensors of {name} have a place in the SD "
                              "VAE: it is another model or a modified file.", FIX)
    return converted


def _fill(config: dict, state: dict, source: str, dtype: torch.dtype) -> nn.Module:
    from diffusers import AutoencoderKL
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(without_meta(config))
    return strict_fill(vae, state, "SD VAE (AutoencoderKL)", os.path.basename(source), FIX, dtype)


def is_sd_vae(vae: nn.Module) -> bool:
    """Whether `vae` has the SD1.5 VAE structure (what the released models were trained with)."""
    config = getattr(vae, "config", {})
    return all(list(config.get(k, ())) == list(SD15_VAE_CONFIG[k]) if isinstance(SD15_VAE_CONFIG[k], list)
               else config.get(k) == SD15_VAE_CONFIG[k] for k in STRUCTURE)
