"""ComfyUI's single-file SVD checkpoints (`models/checkpoints/svd_xt*.safetensors`) as an `SVDBase`.

The file's SGM names are converted offline into the diffusers / transformers modules the rest of the
library uses (key maps and the facts behind them: `single_file_keys.py`); the module configs are shipped
in code, so nothing is fetched. A `.safetensors` file is read lazily (memory-mapped), one tensor at a time,
converted to the requested dtype as it is read, and only the parts the UNet variant needs: the animation
variants never read SVD's UNet. Every tensor of the file is either used exactly once or is one of the
documented unused ones; anything else is refused, as is a file that is not an SVD single file.

Supported: `svd_xt.safetensors` (fp32), `svd_xt_1_1.safetensors` (fp16), the 14-frame `svd.safetensors`
(same layout), files saved by ComfyUI's ImageOnlyCheckpointSave, and the `*_image_decoder` files, whose
frame-wise decoder becomes the temporal decoder with neutral temporal layers (it then decodes every frame
independently, exactly as the frame-wise decoder does).
"""
from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import nn

from ..core.checkpoints import DictTensors, open_checkpoint
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError
from .base import UNET_VARIANTS, SVDBase
from .conditioning import CLIP_MEAN, CLIP_STD
from .single_file_keys import (SVD_XT_SCHEDULER_CONFIG, UNET, Layout, Rule, SingleFileConfigs, conversion_rules,
                               detect_layout, svd_xt_configs, unused_keys)
from .unet import PoseSVDUNet, build_unet

PARTS = ("unet", "vae", "image_encoder")
EXPECTED_FILES = ("svd_xt.safetensors, svd_xt_1_1.safetensors or svd_xt_image_decoder.safetensors (Stability AI's "
                  "stable-video-diffusion-img2vid-xt / -xt-1-1 pages on Hugging Face; the 14-frame svd.safetensors "
                  "works too)")
FOLDER = "ComfyUI's models/checkpoints folder (where the Image Only Checkpoint Loader finds them)"
FIX = f"Put {EXPECTED_FILES} into {FOLDER} and pick it."
LABELS = {"unet": "SVD UNet (UNetSpatioTemporalConditionModel)", "vae": "SVD VAE (AutoencoderKLTemporalDecoder)",
          "image_encoder": "CLIP image encoder (CLIPVisionModelWithProjection)"}
SPATIAL_ONLY_MIX = -1.0e4  # sigmoid() of it is exactly 0 in every float dtype: only the spatial path counts


class SingleFilePlan(NamedTuple):
    """How a file's tensors become module weights: its layout, the rules, and the tensors left unused."""
    layout: Layout
    rules: list[Rule]
    unused: list[str]


# ------------------------------------------------------------------------------------------ planning
def plan_svd_single_file(keys: Iterable[str], label: str = "This checkpoint") -> SingleFilePlan:
    """Check that `keys` are an SVD single file's and plan the conversion; every key is used exactly once
    or is a documented unused one (`SingleFilePlan.unused`), else a MarionetteError names the strays."""
    keys = list(keys)
    _check_is_svd(keys, label)
    layout = detect_layout(keys, label)
    rules = conversion_rules(keys, layout)
    unused = unused_keys(keys, layout)
    uses = Counter(source for rule in rules for source in rule.sources)
    reused = [k for k, n in uses.items() if n > 1]
    if reused:  # a key-map defect, never a property of a file
        raise MarionetteError(f"Internal key map error: {len(reused)} tensors mapped twice (e.g. {reused[:3]}).",
                              "Report this with the checkpoint's name.")
    skipped = set(unused)
    strays = [k for k in keys if k not in uses and k not in skipped]
    if strays:
        raise MarionetteError(
            f"{label} holds {len(strays)} tensors that an SVD single file does not have "
            f"(e.g. {', '.join(strays[:4])}): it is another model or a modified file.", FIX)
    return SingleFilePlan(layout, rules, unused)


def _check_is_svd(keys: list[str], label: str) -> None:
    unet_keys = [k for k in keys if k.startswith(UNET)]
    if not unet_keys:
        heads = Counter(k.split(".", 1)[0] for k in keys)
        looks = ", ".join(f"{head}.* ({n})" for head, n in heads.most_common(4)) or "no tensors"
        hint = ""
        if any(k.startswith(("down_blocks.", "unet.down_blocks.", "conv_in.")) for k in keys):
            hint = (" It looks like a diffusers-format UNet (an SVD folder part or an animation UNet), which is "
                    "loaded elsewhere.")
        raise MarionetteError(
            f"{label} is not a single-file SVD checkpoint: it has no model.diffusion_model.* tensors "
            f"({len(keys)} tensors: {looks}).{hint}", FIX)
    if not any(".time_stack." in k for k in unet_keys):
        raise MarionetteError(
            f"{label} is a single-file image checkpoint (Stable Diffusion style, no temporal layers), not SVD.", FIX)


# ---------------------------------------------------------------------------------------- conversion
def _transform(rule: Rule, tensors: list[torch.Tensor], label: str) -> tuple[torch.Tensor, ...]:
    tensor = tensors[0]
    shape = tuple(tensor.shape)
    if rule.kind == "copy":
        return (tensor,)
    if rule.kind == "conv_to_linear" and tensor.ndim == 4 and shape[2:] == (1, 1):
        return (tensor[:, :, 0, 0],)
    if rule.kind == "transpose" and tensor.ndim == 2:
        return (tensor.t().contiguous(),)
    if rule.kind == "split3" and tensor.ndim >= 1 and shape[0] % 3 == 0:
        return tuple(tensor.chunk(3, dim=0))
    raise MarionetteError(f"{label}: tensor {rule.sources[0]} has shape {list(shape)}, which does not fit "
                          f"its place in the SVD model ({rule.kind}).", FIX)


def _generate(kind: str, like_shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """A tensor the file does not hold (neutral layers), sized after a related file tensor."""
    channels = like_shape[0]
    options = dict(dtype=dtype, device=device)
    if kind == "zeros":
        return torch.zeros(like_shape, **options)
    if kind == "ones":
        return torch.ones(like_shape, **options)
    if kind == "zeros_time_conv":  # diffusers' temporal convolutions have a (3, 1, 1) kernel
        return torch.zeros((channels, channels, 3, 1, 1), **options)
    if kind == "identity_time_conv":  # passes the middle frame of the window through unchanged
        weight = torch.zeros((channels, channels, 3, 1, 1), **options)
        weight[:, :, 1, 0, 0] = torch.eye(channels, **options)
        return weight
    if kind == "identity_1x1":
        return torch.eye(channels, **options)[:, :, None, None].contiguous()
    if kind == "spatial_only_mix":
        return torch.full((1,), SPATIAL_ONLY_MIX, **options)
    raise MarionetteError(f"Internal key map error: unknown generated tensor kind '{kind}'.",
                          "Report this with the checkpoint's name.")


def _convert(plan: SingleFilePlan, source, parts: Iterable[str], dtype: torch.dtype | None,
             label: str) -> dict[str, dict[str, torch.Tensor]]:
    parts = tuple(parts)
    converted: dict[str, dict[str, torch.Tensor]] = {part: {} for part in parts}
    for rule in plan.rules:
        if rule.part not in parts:
            continue
        if rule.sources:
            outputs = _transform(rule, [source.get(name) for name in rule.sources], label)
        else:
            try:
                shape, like_dtype, device = source.like(rule.like)
            except KeyError as error:
                raise MarionetteError(f"{label} lacks {rule.like}.", FIX) from error
            outputs = (_generate(rule.kind, shape, dtype or like_dtype, device),)
        for target, tensor in zip(rule.targets, outputs):
            converted[rule.part][target] = tensor if dtype is None else tensor.to(dtype)
    return converted


def convert_svd_single_file(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A single-file SVD state dict (SGM names) -> {"unet", "vae", "image_encoder"}: state dicts in diffusers
    (`UNetSpatioTemporalConditionModel`, `AutoencoderKLTemporalDecoder`) and transformers
    (`CLIPVisionModelWithProjection`) naming, dtypes kept. Tensors are shared with the input where no
    transform is needed. Raises MarionetteError for anything that is not an SVD single file."""
    plan = plan_svd_single_file(state_dict.keys())
    return _convert(plan, DictTensors(state_dict), PARTS, None, "This checkpoint")


# ------------------------------------------------------------------------------------------- loading
def _fill(module: nn.Module, tensors: dict[str, torch.Tensor], part: str, name: str, dtype) -> nn.Module:
    return strict_fill(module, tensors, LABELS[part], name, f"It is not an SVD-xt img2vid checkpoint. {FIX}", dtype)


def _empty_modules(configs: SingleFileConfigs, unet_variant: str) -> dict[str, nn.Module | None]:
    """The modules on the meta device (no memory, no random init); no UNet for the animation variants."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    with torch.device("meta"):
        return {"vae": AutoencoderKLTemporalDecoder.from_config(dict(configs.vae)),
                "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.image_encoder)),
                "unet": build_unet(configs.unet) if unet_variant == "svd" else None}


def load_svd_single_file(path: str | os.PathLike, dtype: torch.dtype = torch.float16, unet_variant: str = "svd",
                         *, configs: SingleFileConfigs | None = None) -> SVDBase:
    """Load SVD's VAE, CLIP image encoder and (for `unet_variant="svd"`) UNet from a single-file checkpoint.

    Same result as `load_svd_base` on the diffusers folder, with `folder` set to the file path. For
    "stableanimator" / "mimicmotion" the UNet is left out (None) for the paper's weights, and the file's
    UNet is never read. `configs` defaults to SVD-xt's (shipped in code); tests pass tiny ones."""
    path = os.fspath(path)
    dtype = check_dtype(dtype, "SVD models")
    if unet_variant not in UNET_VARIANTS:
        raise MarionetteError(f"Unknown UNet variant '{unet_variant}'.", f"Use one of: {', '.join(UNET_VARIANTS)}.")
    configs = configs or svd_xt_configs()
    name = os.path.basename(path)
    parts = ("vae", "image_encoder") + (("unet",) if unet_variant == "svd" else ())
    with open_checkpoint(path) as source:
        plan = plan_svd_single_file(source.keys(), name)
        modules = _empty_modules(configs, unet_variant)
        for part in parts:  # one part at a time: at most one module's converted tensors are in flight
            tensors = _convert(plan, source, (part,), dtype, name)[part]
            modules[part] = _fill(modules[part], tensors, part, name, dtype)
            del tensors
    files = {part: path for part in parts}
    if plan.layout.decoder == "image":
        files["vae_decoder"] = "frame-wise image decoder (neutral temporal layers: every frame decoded alone)"
    unet: PoseSVDUNet | None = modules["unet"]
    return SVDBase(
        unet=unet, vae=modules["vae"], image_encoder=modules["image_encoder"],
        vae_scaling_factor=float(configs.vae.get("scaling_factor", 0.18215)), dtype=dtype,
        unet_variant=unet_variant, unet_config=dict(configs.unet), clip_mean=CLIP_MEAN, clip_std=CLIP_STD,
        scheduler_config=copy.deepcopy(SVD_XT_SCHEDULER_CONFIG), folder=path, unet_loaded=unet_variant == "svd",
        files=files)
