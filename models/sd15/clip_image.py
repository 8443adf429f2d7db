"""CLIP image conditioning of the SD1.5 ReferenceNet family: one projected 768-d token of the reference.

Both Champ and Moore-AnimateAnyone use the sd-image-variations image encoder (HF
`lambdalabs/sd-image-variations-diffusers`, folder `image_encoder/`; Champ's HF repo bundles the same
as `image_encoder/`): a transformers `CLIPVisionModelWithProjection`, ViT-L/14 at 224 px, whose projected
`image_embeds` [B, 768] become `encoder_hidden_states` [B, 1, 768] (zeros for the unconditional branch).
The reference is squashed to 224x224 (PIL bicubic, no crop), then normalised with OpenAI's mean/std.

Sources (offline, strict):
- a diffusers-style folder (`config.json` + `model.safetensors` / `pytorch_model.bin`, or its parent with an
  `image_encoder/` subfolder);
- a single file as ComfyUI's `models/clip_vision` folder holds them: transformers naming (`vision_model.*` +
  `visual_projection.weight`; the text tower of a full CLIP file is ignored, as ComfyUI does) or OpenAI's
  naming (`visual.transformer.resblocks.*`, converted as ComfyUI's `clip_vision.convert_to_transformers`).
Other towers (SVD's ViT-H/14, ViT-bigG, 336 px models) are refused by name.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..core.checkpoints import load_state_dict_file
from ..core.configs import read_json, without_meta
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError

HF_REPO = "lambdalabs/sd-image-variations-diffusers"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_L14_CONFIG = {  # image_encoder/config.json of sd-image-variations (structural values)
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
    "patch_size": 14, "image_size": 224, "projection_dim": 768, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "num_channels": 3,
}
STRUCTURE = ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "projection_dim")
WEIGHT_NAMES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")
FIX = (f"Use the sd-image-variations image encoder: the image_encoder folder of Hugging Face '{HF_REPO}' (or of "
       "Champ's release), or that encoder as one file in ComfyUI/models/clip_vision.")
IGNORED_KEYS = ("text_projection.weight", "logit_scale", "vision_model.embeddings.position_ids")
OPENAI_PREFIX = "visual."


def load_image_encoder(path: str | os.PathLike, dtype: torch.dtype = torch.float16, *,
                       require_vit_l14: bool = True) -> nn.Module:
    """The CLIP image encoder (CLIPVisionModelWithProjection, eval, no gradients) from a folder or a single
    file. `require_vit_l14=False` lets other (tiny test) structures through."""
    path = os.fspath(path)
    dtype = check_dtype(dtype, "CLIP image encoder")
    if os.path.isdir(path):
        folder = os.path.join(path, "image_encoder") if os.path.isdir(os.path.join(path, "image_encoder")) else path
        config = without_meta(read_json(os.path.join(folder, "config.json"),
                                        f"The image encoder folder {folder} has no config.json.", FIX))
        weights = next((os.path.join(folder, n) for n in WEIGHT_NAMES if os.path.isfile(os.path.join(folder, n))), None)
        if weights is None:
            raise MarionetteError(f"The image encoder folder {folder} has no weights ({', '.join(WEIGHT_NAMES)}).", FIX)
        if require_vit_l14:
            _check_structure(config, folder)
        return _build_and_fill(config, _transformers_keys(load_state_dict_file(weights), weights), weights, dtype)
    state = load_state_dict_file(path)  # refuses missing, truncated and non-weight files by name
    state = _transformers_keys(state, path)
    config = {**VIT_L14_CONFIG, **_structure_from_keys(state, path)}  # heads: ViT-L/14's 16
    if require_vit_l14:
        _check_structure(config, path)
    return _build_and_fill(config, state, path, dtype)


def _build_and_fill(config: dict, state: Mapping[str, torch.Tensor], source: str, dtype: torch.dtype) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    clip_config = CLIPVisionConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(clip_config)
    return strict_fill(encoder, state, "CLIP image encoder (ViT-L/14 with projection)", os.path.basename(source),
                       FIX, dtype)


def _transformers_keys(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """transformers naming, without the text tower of a full CLIP file and without constant buffers."""
    if f"{OPENAI_PREFIX}transformer.resblocks.0.attn.in_proj_weight" in state:
        state = _from_openai(state)
    out = {k: v for k, v in state.items()
           if not k.startswith("text_model.") and k not in IGNORED_KEYS}
    if not any(k.startswith("vision_model.") for k in out) or "visual_projection.weight" not in out:
        raise MarionetteError(f"{os.path.basename(source)} is not a CLIP vision encoder with a projection (no "
                              f"vision_model.* / visual_projection.weight; first names {', '.join(list(state)[:3])}).",
                              FIX)
    return out


def _from_openai(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP's `visual.*` names -> transformers' (the attention's packed in_proj split into q, k, v)."""
    renames = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
               "positional_embedding": "embeddings.position_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
               "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
               "ln_post.bias": "post_layernorm.bias"}
    layer_renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                     "attn.out_proj": "self_attn.out_proj"}
    out = {}
    for key, tensor in state.items():
        if not key.startswith(OPENAI_PREFIX):
            out[key] = tensor  # other towers are dropped or refused later
            continue
        name = key[len(OPENAI_PREFIX):]
        if name == "proj":
            out["visual_projection.weight"] = tensor.t().contiguous()
        elif name in renames:
            out[f"vision_model.{renames[name]}"] = tensor
        elif name.startswith("transformer.resblocks."):
            index, rest = name[len("transformer.resblocks."):].split(".", 1)
            prefix = f"vision_model.encoder.layers.{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_"):]
                for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
                continue
            for old, new in layer_renames.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            out[prefix + rest] = tensor
        else:
            out[key] = tensor
    return out


def _structure_from_keys(state: Mapping[str, torch.Tensor], source: str) -> dict:
    """hidden size, depth, patch, image size and projection width read off the tensors."""
    try:
        patch = state["vision_model.embeddings.patch_embedding.weight"]
        positions = state["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("vision_model.encoder.layers."))
    except (KeyError, ValueError) as error:
        raise MarionetteError(f"{os.path.basename(source)} lacks CLIP vision tensors ({error}).", FIX) from error
    grid = int(round((positions - 1) ** 0.5))
    return {"hidden_size": patch.shape[0], "patch_size": patch.shape[-1], "image_size": grid * patch.shape[-1],
            "num_hidden_layers": layers, "projection_dim": state["visual_projection.weight"].shape[0],
            "intermediate_size": state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]}


def _check_structure(config: Mapping, source: str) -> None:
    wrong = [f"{k}={config.get(k)}" for k in STRUCTURE if config.get(k) != VIT_L14_CONFIG[k]]
    if wrong:
        raise MarionetteError(
            f"{os.path.basename(source)} is not the ViT-L/14 image encoder these models were trained with "
            f"({', '.join(wrong)}; expected hidden_size=1024, 24 layers, patch 14, 224 px, projection_dim=768; "
            "SVD's ViT-H/14 encoder has hidden_size=1280 and projection_dim=1024).", FIX)


@torch.no_grad()
def encode_reference(image_encoder: nn.Module, images_0_1: torch.Tensor,
                     mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> torch.Tensor:
    """Reference IMAGE batch [B, H, W, 3] in [0, 1] -> CLIP tokens [B, 1, projection_dim] (squash to the
    encoder's size, bicubic with antialiasing, 8-bit rounding as the official PIL path, OpenAI mean/std)."""
    images = torch.as_tensor(images_0_1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise MarionetteError(f"The reference must be an IMAGE batch [B, H, W, 3]; got {tuple(images.shape)}.",
                              "Pass the reference image as it comes from Load Reference.")
    parameter = next(image_encoder.parameters())
    size = int(image_encoder.config.image_size)
    x = images.to(parameter.device, torch.float32).permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    x = (x.clamp(0, 1) * 255).round() / 255
    x = (x - torch.tensor(mean, device=x.device)[:, None, None]) / torch.tensor(std, device=x.device)[:, None, None]
    embeds = image_encoder(pixel_values=x.to(parameter.dtype)).image_embeds
    return embeds.unsqueeze(1)
