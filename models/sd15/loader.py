"""Stable Diffusion 1.5 for DisPose's keypoint correspondence (DIFT): its UNet, VAE and CLIP text encoder.

Two sources, both offline and strict (every module tensor loaded exactly once, nothing left unexplained):
- the diffusers folder `stable-diffusion-v1-5` (unet/, vae/, text_encoder/; the configs are read from
  the folder, the weights from the `.fp16` or full safetensors / .bin files);
- ComfyUI's single-file checkpoint (`v1-5-pruned-emaonly.safetensors`, `-fp16`, `.ckpt`, `v1-5-pruned`),
  converted with diffusers' own LDM converters (pure functions, no network) into modules built from the
  SD1.5 configs shipped below. A file that also holds EMA weights (`model_ema.*`) gives its EMA UNet,
  which is what the diffusers folder holds.

The tokenizer is never needed: DisPose's prompt is fixed and its CLIP token ids are shipped in `dift.py`.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checkpoints import load_state_dict_file, open_checkpoint
from ..core.configs import read_json, without_meta
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError

HF_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # formerly runwayml/stable-diffusion-v1-5
FOLDER_LAYOUT = ("<folder>/unet/{config.json, diffusion_pytorch_model.fp16.safetensors}, "
                 "<folder>/vae/{config.json, diffusion_pytorch_model.fp16.safetensors}, "
                 "<folder>/text_encoder/{config.json, model.fp16.safetensors} (the full-precision .safetensors "
                 "and the .bin files work too; tokenizer/ and scheduler/ are not needed)")
FOLDER_FIX = (f"Point to the stable-diffusion-v1-5 diffusers folder (e.g. ComfyUI/models/diffusers/"
              f"stable-diffusion-v1-5), downloaded from Hugging Face '{HF_REPO}' with `huggingface-cli download "
              f"{HF_REPO} --include 'unet/*' 'vae/*' 'text_encoder/*' --local-dir <folder>`, or use the single file "
              "v1-5-pruned-emaonly.safetensors from ComfyUI/models/checkpoints.")
FILE_FIX = ("Put v1-5-pruned-emaonly.safetensors (or v1-5-pruned-emaonly-fp16.safetensors / v1-5-pruned-emaonly.ckpt, "
            f"Hugging Face '{HF_REPO}') into ComfyUI/models/checkpoints and pick it, or use the stable-diffusion-v1-5 "
            "diffusers folder.")
LABELS = {"unet": "SD1.5 UNet (UNet2DConditionModel)", "vae": "SD1.5 VAE (AutoencoderKL)",
          "text_encoder": "SD1.5 CLIP text encoder (CLIPTextModel)"}

# `stable-diffusion-v1-5` unet/config.json, vae/config.json and text_encoder/config.json (structural values).
SD15_UNET_CONFIG = {
    "in_channels": 4, "out_channels": 4, "sample_size": 64, "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32,
}
SD15_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512, "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
SD15_TEXT_CONFIG = {  # openai/clip-vit-large-patch14's text tower
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 768, "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0,
    "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
# What makes a UNet / text encoder SD1.x (an SD2 or fine-tune of another family differs in one of these).
SD15_UNET_STRUCTURE = ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types",
                       "up_block_types", "in_channels", "attention_head_dim")
SD15_TEXT_STRUCTURE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "max_position_embeddings")

# Single-file prefixes (LDM naming) and the tensors such files carry that SD1.5 inference never reads.
UNET_PREFIX, EMA_PREFIX, VAE_PREFIX = "model.diffusion_model.", "model_ema.", "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
TEXT_PREFIX = "text_model."
POSITION_IDS = "text_model.embeddings.position_ids"  # a non-persistent buffer in current transformers
DDPM_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2", "logvar")
UNUSED_SINGLE_KEYS = DDPM_BUFFERS + ("model_ema.decay", "model_ema.num_updates", CLIP_PREFIX + POSITION_IDS,
                                     CLIP_PREFIX + "text_projection.weight", CLIP_PREFIX + "logit_scale")
EMA_MIN_KEYS = 100  # diffusers' own rule for "this file carries EMA weights"


@dataclass(frozen=True)
class SD15Configs:
    """Module configs for a single-file load (tests pass tiny ones)."""
    unet: dict
    vae: dict
    text_encoder: dict


def sd15_configs() -> SD15Configs:
    """The SD1.5 configs shipped in code (fresh copies)."""
    return SD15Configs(copy.deepcopy(SD15_UNET_CONFIG), copy.deepcopy(SD15_VAE_CONFIG),
                       copy.deepcopy(SD15_TEXT_CONFIG))


@dataclass
class SD15Parts:
    """The loaded SD1.5 modules (CPU, `dtype`, eval mode, no gradients)."""
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    dtype: torch.dtype
    source: str  # the folder or file they came from
    files: dict[str, str] = field(default_factory=dict)  # what was read, by part

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.get("scaling_factor", SD15_VAE_CONFIG["scaling_factor"]))


# ------------------------------------------------------------------------------------------- modules
def _empty_modules(configs: SD15Configs) -> dict[str, nn.Module]:
    """The three modules on the meta device: no memory, no random init."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    text_config = CLIPTextConfig(**without_meta(configs.text_encoder))
    with torch.device("meta"):
        return {"unet": UNet2DConditionModel.from_config(without_meta(configs.unet)),
                "vae": AutoencoderKL.from_config(without_meta(configs.vae)),
                "text_encoder": CLIPTextModel(text_config)}


def text_keys_for(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP text weights (`text_model.*` naming of the released files) renamed for `module`: transformers 5
    builds CLIPTextModel without the `text_model.` level, 4.x with it. The position ids (a constant
    0..76 buffer that newer transformers no longer stores) are dropped."""
    wants_prefix = any(k.startswith(TEXT_PREFIX) for k in module.state_dict())
    out = {}
    for key, tensor in state_dict.items():
        if key == POSITION_IDS or key == POSITION_IDS[len(TEXT_PREFIX):]:
            continue
        bare = key[len(TEXT_PREFIX):] if key.startswith(TEXT_PREFIX) else key
        out[TEXT_PREFIX + bare if wants_prefix else bare] = tensor
    return out


def _fill(module: nn.Module, tensors: Mapping[str, torch.Tensor], part: str, source: str, dtype: torch.dtype,
          fix: str) -> nn.Module:
    return strict_fill(module, tensors, LABELS[part], source, f"It is not a Stable Diffusion 1.5 model. {fix}", dtype)


def check_sd15_structure(unet_config: Mapping, text_config: Mapping, source: str, fix: str) -> None:
    """Refuse an SD2 / SDXL / other UNet or text encoder: DIFT features are only DisPose's from SD1.x."""
    wrong = [f"unet {k}={unet_config.get(k)!r}" for k in SD15_UNET_STRUCTURE
             if _plain(unet_config.get(k)) != _plain(SD15_UNET_CONFIG[k])]
    wrong += [f"text_encoder {k}={text_config.get(k)!r}" for k in SD15_TEXT_STRUCTURE
              if text_config.get(k) != SD15_TEXT_CONFIG[k]]
    if wrong:
        raise MarionetteError(f"{source} is not Stable Diffusion 1.5 ({'; '.join(wrong[:4])}).", fix)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# -------------------------------------------------------------------------------------- diffusers folder
def _read_json(folder: str, relative: str) -> dict:
    return read_json(os.path.join(folder, relative),
                     f"The SD1.5 folder {folder} has no {relative}. Expected layout: {FOLDER_LAYOUT}.", FOLDER_FIX)


def _weights_file(folder: str, part: str, stems: tuple[str, str], dtype: torch.dtype) -> str:
    """The part's weight file: the .fp16 variant first for half dtypes, the full one first for float32."""
    safetensors, pickle = stems
    variants = [".fp16", ""] if dtype != torch.float32 else ["", ".fp16"]
    names = [f"{stem}{variant}.{ext}" for stem, ext in ((safetensors, "safetensors"), (pickle, "bin"))
             for variant in variants]
    for name in names:
        path = os.path.join(folder, part, name)
        if os.path.isfile(path):
            return path
    raise MarionetteError(
        f"The SD1.5 folder {folder} has no weights in {part}/ (looked for {', '.join(names)}). "
        f"Expected layout: {FOLDER_LAYOUT}.", FOLDER_FIX)


def load_sd15_folder(folder: str | os.PathLike, dtype: torch.dtype = torch.float16, *,
                     require_sd15: bool = True) -> SD15Parts:
    """SD1.5's UNet, VAE and CLIP text encoder from a diffusers folder (offline, strict). The configs come
    from the folder; `require_sd15=False` lets other (tiny test) configs through."""
    folder = os.fspath(folder)
    dtype = check_dtype(dtype, "SD1.5 models")
    if not os.path.isdir(folder):
        raise MarionetteError(f"The SD1.5 folder {folder} does not exist. Expected layout: {FOLDER_LAYOUT}.",
                              FOLDER_FIX)
    configs = SD15Configs(_read_json(folder, os.path.join("unet", "config.json")),
                          _read_json(folder, os.path.join("vae", "config.json")),
                          _read_json(folder, os.path.join("text_encoder", "config.json")))
    if require_sd15:
        check_sd15_structure(configs.unet, configs.text_encoder, folder, FOLDER_FIX)
    modules = _empty_modules(configs)
    stems = {"unet": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
             "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model"), "text_encoder": ("model", "pytorch_model")}
    files = {}
    for part, module in modules.items():
        path = _weights_file(folder, part, stems[part], dtype)
        tensors = load_state_dict_file(path)
        if part == "text_encoder":
            tensors = text_keys_for(module, tensors)
        modules[part] = _fill(module, tensors, part, path, dtype, FOLDER_FIX)
        files[part] = path
        del tensors
    return SD15Parts(modules["unet"], modules["vae"], modules["text_encoder"], dtype, folder, files)


# ------------------------------------------------------------------------------------------ single file
class _LazyTensors(Mapping):
    """The tensors of one part of a single file, read (and cast to `dtype`) only when asked for: diffusers'
    converters call `keys()` and `get()`, so only one part's tensors are ever in memory."""

    def __init__(self, read, keys: Iterable[str], dtype: torch.dtype | None):
        self._read, self._keys, self._dtype = read, list(keys), dtype
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        tensor = self._read(key)
        if self._dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self._dtype)
        return tensor

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class SingleFilePlan:
    """Which tensors of a single file feed which part."""
    unet: list[str]  # model.diffusion_model.* (always present; the weights used unless `ema`)
    ema: list[str]  # model_ema.* weights (used for the UNet when there are enough of them)
    vae: list[str]
    clip: list[str]
    unused: list[str]

    @property
    def uses_ema(self) -> bool:
        return len(self.ema) >= EMA_MIN_KEYS


def plan_sd15_single_file(keys: Iterable[str], label: str = "This checkpoint") -> SingleFilePlan:
    """Sort a single file's tensor names into parts; refuse other model families and unexplained tensors."""
    keys = list(keys)
    groups = {"unet": [], "ema": [], "vae": [], "clip": [], "unused": [], "stray": []}
    for key in keys:
        if key in UNUSED_SINGLE_KEYS or key.startswith(VAE_PREFIX + "loss."):
            groups["unused"].append(key)
        elif key.startswith(UNET_PREFIX):
            groups["unet"].append(key)
        elif key.startswith(EMA_PREFIX):
            groups["ema"].append(key)
        elif key.startswith(VAE_PREFIX):
            groups["vae"].append(key)
        elif key.startswith(CLIP_PREFIX):
            groups["clip"].append(key)
        else:
            groups["stray"].append(key)
    _check_family(keys, groups, label)
    if groups["stray"]:
        raise MarionetteError(f"{label} holds {len(groups['stray'])} tensors an SD1.5 checkpoint does not have "
                              f"(e.g. {', '.join(groups['stray'][:4])}): it is another model or a modified file.",
                              FILE_FIX)
    if groups["ema"] and len(groups["ema"]) < EMA_MIN_KEYS:
        groups["unused"] += groups.pop("ema")
        groups["ema"] = []
    return SingleFilePlan(groups["unet"], groups["ema"], groups["vae"], groups["clip"], groups["unused"])


def _check_family(keys: list[str], groups: dict, label: str) -> None:
    if any(k.startswith("conditioner.embedders.") for k in keys):
        family = "SVD" if any(".time_stack." in k for k in keys) else "SDXL"
        raise MarionetteError(f"{label} is an {family} checkpoint, not Stable Diffusion 1.5.", FILE_FIX)
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise MarionetteError(f"{label} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder), not 1.5.",
                              FILE_FIX)
    missing = [name for name, part in (("UNet (model.diffusion_model.*)", "unet"), ("VAE (first_stage_model.*)", "vae"),
                                       ("CLIP text encoder (cond_stage_model.transformer.*)", "clip"))
               if not groups[part]]
    if missing:
        looks = ""
        if any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.", "text_model.")) for k in keys):
            looks = (" It looks like one part of a diffusers folder: load the whole stable-diffusion-v1-5 folder "
                     "instead.")
        raise MarionetteError(f"{label} is not a complete single-file SD1.5 checkpoint: it has no "
                              f"{', no '.join(missing)}.{looks}", FILE_FIX)


@contextlib.contextmanager
def _quiet_converters():
    """diffusers' converters log advice about EMA flags of its own command line tools; ours is decided."""
    converter_log = logging.getLogger("diffusers.loaders.single_file_utils")
    level = converter_log.level
    converter_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        converter_log.setLevel(level)


def _convert_part(part: str, plan: SingleFilePlan, read, configs: SD15Configs, dtype) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    if part == "unet":
        names = plan.unet + (plan.ema if plan.uses_ema else [])
        with _quiet_converters():
            converted = convert_ldm_unet_checkpoint(_LazyTensors(read, names, dtype), without_meta(configs.unet),
                                                    extract_ema=plan.uses_ema)
        expected = len(plan.unet)
    elif part == "vae":
        with _quiet_converters():
            converted = convert_ldm_vae_checkpoint(_LazyTensors(read, plan.vae, dtype), without_meta(configs.vae))
        expected = len(plan.vae)
    else:
        tensors = _LazyTensors(read, plan.clip, dtype)
        converted = {}
        for key in plan.clip:
            bare = key[len(CLIP_PREFIX):]
            # early SD1 files name the tower without its `text_model.` level (ComfyUI renames them the same way)
            converted[bare if bare.startswith(TEXT_PREFIX) else TEXT_PREFIX + bare] = tensors[key]
        expected = len(plan.clip)
    absent = [k for k, v in converted.items() if v is None]  # an EMA copy that lacks some of the UNet's tensors
    if absent:
        raise MarionetteError(f"This checkpoint's EMA weights (model_ema.*) lack {len(absent)} UNet tensors "
                              f"(e.g. {', '.join(absent[:3])}).", f"The file is damaged or modified. {FILE_FIX}")
    if len(converted) != expected:  # the converters skip names they do not know
        raise MarionetteError(f"Only {len(converted)} of the {expected} {LABELS[part]} tensors of this checkpoint "
                              "have a place in the SD1.5 model: it is another model or a modified file.", FILE_FIX)
    return converted


def convert_sd15_single_file(state_dict: Mapping[str, torch.Tensor], configs: SD15Configs | None = None
                             ) -> dict[str, dict[str, torch.Tensor]]:
    """A single-file SD1.5 state dict (LDM names) -> {"unet", "vae", "text_encoder"} state dicts in diffusers /
    released-transformers naming (`text_model.*`), dtypes kept. Raises MarionetteError for other files."""
    configs = configs or sd15_configs()
    plan = plan_sd15_single_file(state_dict.keys())
    return {part: _convert_part(part, plan, state_dict.__getitem__, configs, None)
            for part in ("unet", "vae", "text_encoder")}


def load_sd15_single_file(path: str | os.PathLike, dtype: torch.dtype = torch.float16, *,
                          configs: SD15Configs | None = None) -> SD15Parts:
    """SD1.5's UNet, VAE and CLIP text encoder from a single-file checkpoint (LDM naming), offline and strict.
    `configs` defaults to SD1.5's (shipped in code); tests pass tiny ones."""
    path = os.fspath(path)
    dtype = check_dtype(dtype, "SD1.5 models")
    configs = configs or sd15_configs()
    name = os.path.basename(path)
    with open_checkpoint(path) as source:
        keys, read = source.keys(), source.get
        plan = plan_sd15_single_file(keys, name)
        modules = _empty_modules(configs)
        for part in ("unet", "vae", "text_encoder"):  # one part's tensors in memory at a time
            tensors = _convert_part(part, plan, read, configs, dtype)
            if part == "text_encoder":
                tensors = text_keys_for(modules[part], tensors)
            modules[part] = _fill(modules[part], tensors, part, name, dtype, FILE_FIX)
            del tensors
    files = {part: path for part in modules}
    if plan.uses_ema:
        files["unet"] = f"{path} (EMA weights)"
    return SD15Parts(modules["unet"], modules["vae"], modules["text_encoder"], dtype, path, files)


def load_sd15(path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> SD15Parts:
    """SD1.5 from a diffusers folder or a single-file checkpoint, whichever `path` is."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_sd15_folder(path, dtype)
    if os.path.isfile(path):
        return load_sd15_single_file(path, dtype)
    raise MarionetteError(f"No SD1.5 model at {path}.", f"{FILE_FIX} Or: {FOLDER_FIX}")
