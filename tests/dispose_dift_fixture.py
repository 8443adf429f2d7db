"""Tiny random SD1.5-shaped modules for the DisPose DIFT tests, and the files they would be released as:
a diffusers folder, and a single-file checkpoint in LDM naming (names written here from the LDM layout, not
by our converter, so that loading them checks the conversion).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

# the tiny modules live in the library (the nodes offer them too); re-exported for the tests
from marionette.models.dispose.tiny import (FEATURE_CHANNELS, TINY_TEXT, TINY_UNET, TINY_VAE,  # noqa: E402,F401
                                            tiny_configs, tiny_modules)


# ------------------------------------------------------------------------------------- released files
def released_text_state(text_encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The text encoder's weights as the released files name them (`text_model.*`, with the position ids)."""
    state = {(k if k.startswith("text_model.") else "text_model." + k): v.clone()
             for k, v in text_encoder.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


def write_folder(root: Path, modules: dict[str, nn.Module], variant: str = "") -> Path:
    """A stable-diffusion-v1-5 style diffusers folder (configs + safetensors) of `modules`."""
    from safetensors.torch import save_file
    dtype = torch.float16 if variant == ".fp16" else torch.float32
    for part, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        folder = root / part
        folder.mkdir(parents=True, exist_ok=True)
        module = modules[part]
        if part == "text_encoder":
            config = dict(TINY_TEXT, architectures=["CLIPTextModel"], model_type="clip_text_model",
                          _name_or_path="tiny", transformers_version="4.22.0.dev0", torch_dtype="float32")
            state = released_text_state(module)
        else:
            config = dict(module.config, _class_name=type(module).__name__, _diffusers_version="0.6.0")
            state = module.state_dict()
        (folder / "config.json").write_text(json.dumps(config, default=list), encoding="utf-8")
        save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()},
                  str(folder / f"{stem}{variant}.safetensors"))
    return root


RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def ldm_unet_name(key: str, config: dict) -> str:
    """The LDM (`model.diffusion_model.` less) name of a diffusers UNet2DConditionModel key."""
    per = config["layers_per_block"] + 1
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    module, kind = key.rsplit(".", 1)
    if module in fixed:
        return f"{fixed[module]}.{kind}"
    resnet = lambda rest: RESNET[rest.split(".")[0]] + rest[len(rest.split(".")[0]):]  # noqa: E731
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = 1 + int(m[1]) * per + int(m[3])
        return f"input_blocks.{index}.0.{resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{index}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = int(m[1]) * per + int(m[3])
        return f"output_blocks.{index}.0.{resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{index}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if config["up_block_types"][block].startswith("CrossAttn") else 1
        return f"output_blocks.{block * per + per - 1}.{slot}.conv.{m[2]}"
    raise KeyError(key)


def ldm_vae_name(key: str, levels: int) -> str:
    """The LDM (`first_stage_model.` less) name of a diffusers AutoencoderKL key."""
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)",
                         key):
        part = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        return f"{m[1]}.mid.attn_1.{part}.{m[3]}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv


def single_file_state(modules: dict[str, nn.Module], ema: bool = False) -> dict[str, torch.Tensor]:
    """`modules` as an original-layout single file (v1-5-pruned-emaonly style, with the DDPM buffers and CLIP
    position ids). With `ema`, the UNet goes into `model_ema.*` and `model.diffusion_model.*` gets other values
    (as in v1-5-pruned.safetensors, whose EMA weights are the ones to use)."""
    unet_config, levels = dict(modules["unet"].config), len(modules["vae"].config.block_out_channels)
    state = {}
    for key, tensor in modules["unet"].state_dict().items():
        name = "model.diffusion_model." + ldm_unet_name(key, unet_config)
        if ema:
            state["model_ema." + "".join(name.split(".")[1:])] = tensor.clone()
            state[name] = torch.full_like(tensor, 7.0)
        else:
            state[name] = tensor.clone()
    for key, tensor in modules["vae"].state_dict().items():
        name = ldm_vae_name(key, levels)
        attention = ".mid.attn_1." in name and name.endswith(".weight") and ".norm." not in name
        state["first_stage_model." + name] = (tensor[:, :, None, None] if attention else tensor).clone()
    for key, tensor in released_text_state(modules["text_encoder"]).items():
        state["cond_stage_model.transformer." + key] = tensor
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod"):
        state[name] = torch.rand(1000)
    if ema:
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(1, dtype=torch.int)
    return state
