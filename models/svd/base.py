"""The SVD-xt base model from its diffusers folder, and the StableAnimator / MimicMotion UNets on top of it.

Both animation models reuse SVD-xt's VAE (`AutoencoderKLTemporalDecoder`), CLIP image encoder
(`CLIPVisionModelWithProjection`, ViT-H/14, 1024-d `image_embeds`), feature-extractor and scheduler
configs; their own checkpoints replace the UNet entirely (MimicMotion builds its UNet from
`unet/config.json` only and never reads SVD's UNet weights). So `load_svd_base` loads SVD's UNet weights
only for `unet_variant="svd"`; for the animation variants it builds the UNet from the folder's config on
the meta device (no memory, no random init) and `load_animation_unet` then fills it strictly.

Nothing touches the network: modules are built from the shipped JSON configs and the weights are read
with safetensors, then loaded with `load_state_dict(strict=True, assign=True)`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import MarionetteError
from .checkpoints import load_checkpoint, load_state_dict_file, split_mimicmotion
from .pose_net import PoseNet
from .unet import PoseSVDUNet, build_unet

SVD_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
SVD_FOLDER_NAMES = "stable-video-diffusion-img2vid-xt or stable-video-diffusion-img2vid-xt-1-1"
SVD_SCALING_FACTOR = 0.18215  # SVD's vae/config.json; used when a config omits it
UNET_VARIANTS = ("svd", "stableanimator", "mimicmotion")
DTYPES = (torch.float16, torch.float32, torch.bfloat16)

LAYOUT = (
    "<folder>/unet/{config.json, diffusion_pytorch_model.fp16.safetensors}, "
    "<folder>/vae/{config.json, diffusion_pytorch_model.fp16.safetensors}, "
    "<folder>/image_encoder/{config.json, model.fp16.safetensors}, "
    "<folder>/feature_extractor/preprocessor_config.json, <folder>/scheduler/scheduler_config.json "
    "(the non-.fp16 .safetensors files work too)")
WHERE = (f"Download the diffusers folder from Hugging Face '{SVD_REPO}' (or '{SVD_REPO}-1-1'), after "
         "accepting its licence on the model page, e.g. `huggingface-cli download "
         f"{SVD_REPO} --include 'unet/*' 'vae/*' 'image_encoder/*' 'feature_extractor/*' 'scheduler/*' "
         "--local-dir <folder>`")

# Which animation checkpoints fit which UNet variant (keys of checkpoints.VARIANTS).
ANIMATION_FILES = {
    "stableanimator": ("stableanimator_unet",),
    "mimicmotion": ("mimicmotion", "mimicmotion_unet"),
}
POSE_NET_FILES = ("stableanimator_pose_net", "mimicmotion_pose_net")


@dataclass
class SVDBase:
    """The loaded SVD-xt parts (all on the CPU, in `dtype`, eval mode).

    `unet` holds weights when `unet_loaded`; for the animation variants it stays an empty (meta) module
    until `load_animation_unet`. `pose_net` is set by `load_animation_unet`."""
    unet: PoseSVDUNet
    vae: nn.Module
    image_encoder: nn.Module
    vae_scaling_factor: float
    dtype: torch.dtype
    unet_variant: str
    unet_config: dict
    clip_mean: tuple[float, float, float]
    clip_std: tuple[float, float, float]
    scheduler_config: dict
    folder: str
    unet_loaded: bool = False
    pose_net: PoseNet | None = None
    files: dict[str, str] = field(default_factory=dict)  # what was read, by part

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SVD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ----------------------------------------------------------------------------------------- folder
def _missing(folder: str, what: str) -> MarionetteError:
    return MarionetteError(
        f"The SVD-xt folder {folder} has no {what}. Expected layout: {LAYOUT}.",
        f"Point to the complete {SVD_FOLDER_NAMES} folder. {WHERE}.")


def _read_json(folder: str, relative: str) -> dict:
    path = os.path.join(folder, relative)
    if not os.path.isfile(path):
        raise _missing(folder, relative)
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MarionetteError(f"{path} is not readable JSON ({error}).",
                              f"Download the file again. {WHERE}.") from error
    if not isinstance(content, dict):
        raise MarionetteError(f"{path} does not hold a JSON object.", f"Download the file again. {WHERE}.")
    return content


def _weights_file(folder: str, subfolder: str, stem: str, dtype: torch.dtype) -> str:
    """The subfolder's safetensors file: the .fp16 one first for half dtypes, the full one first for float32
    (both hold the same weights; reading the closer one saves a conversion)."""
    names = [f"{stem}.fp16.safetensors", f"{stem}.safetensors"]
    if dtype == torch.float32:
        names.reverse()
    for name in names:
        path = os.path.join(folder, subfolder, name)
        if os.path.isfile(path):
            return path
    raise _missing(folder, f"{subfolder}/{names[0]} (or {subfolder}/{names[1]})")


def _config_without_meta(config: dict) -> dict:
    """A diffusers config without its bookkeeping entries (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------- loading
def _strict_load(module: nn.Module, state_dict: dict, label: str, source: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise MarionetteError(
            f"{source} does not fit the {label}: {' '.join(lines[:4])[:600]}",
            f"Use the files of the {SVD_FOLDER_NAMES} release. {WHERE}.") from error


def _materialise_buffers(module: nn.Module, label: str) -> None:
    """Non-persistent buffers are not in the weight file, so a meta-built module still lacks them after
    loading. The only one these models have is CLIP's `position_ids` (0..n-1)."""
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, attribute = name.rpartition(".")
        if attribute != "position_ids":
            raise MarionetteError(f"The {label} has a buffer '{name}' that no weight file provides.",
                                  "Install the transformers/diffusers versions from requirements.txt.")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner.register_buffer(attribute, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)


def _finish(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # plain nn.Module.to: diffusers' override warns about fp32-only modules, which these models do not have
    return nn.Module.to(module, dtype=dtype).eval().requires_grad_(False)


def _load_vae(folder: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    from diffusers import AutoencoderKLTemporalDecoder
    config = _read_json(folder, os.path.join("vae", "config.json"))
    path = _weights_file(folder, "vae", "diffusion_pytorch_model", dtype)
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder.from_config(_config_without_meta(config))
    _strict_load(vae, load_state_dict_file(path), "SVD VAE (AutoencoderKLTemporalDecoder)", path)
    _materialise_buffers(vae, "VAE")
    return _finish(vae, dtype), path


def _load_image_encoder(folder: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    config = _read_json(folder, os.path.join("image_encoder", "config.json"))
    path = _weights_file(folder, "image_encoder", "model", dtype)
    clip_config = CLIPVisionConfig.from_dict(_config_without_meta(config))
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(clip_config)
    _strict_load(encoder, load_state_dict_file(path), "CLIP image encoder (CLIPVisionModelWithProjection)", path)
    _materialise_buffers(encoder, "CLIP image encoder")
    return _finish(encoder, dtype), path


def _clip_normalisation(folder: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    relative = os.path.join("feature_extractor", "preprocessor_config.json")
    config = _read_json(folder, relative)
    mean, std = config.get("image_mean"), config.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3
            and all(isinstance(v, (int, float)) for v in mean + std) and min(std) > 0):
        raise MarionetteError(
            f"{os.path.join(folder, relative)} lacks three-channel image_mean / image_std values.",
            f"Download the file again. {WHERE}.")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), os.path.join(folder, relative)


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise MarionetteError(f"Unsupported dtype {dtype} for the SVD models.",
                              "Use torch.float16, torch.bfloat16 or torch.float32.")
    return dtype


def load_svd_base(folder: str | os.PathLike, dtype: torch.dtype = torch.float16,
                  unet_variant: str = "svd") -> SVDBase:
    """Load SVD-xt's VAE, CLIP image encoder and UNet from a diffusers folder (offline, strict).

    `unet_variant`: "svd" loads SVD's own UNet weights; "stableanimator" (UNet with the ID adapter) and
    "mimicmotion" build the UNet from `unet/config.json` without weights, for `load_animation_unet`."""
    folder = os.fspath(folder)
    dtype = _check_dtype(dtype)
    if unet_variant not in UNET_VARIANTS:
        raise MarionetteError(f"Unknown UNet variant '{unet_variant}'.", f"Use one of: {', '.join(UNET_VARIANTS)}.")
    if not os.path.isdir(folder):
        raise MarionetteError(f"The SVD-xt folder {folder} does not exist. Expected layout: {LAYOUT}.",
                              f"Point to the {SVD_FOLDER_NAMES} folder. {WHERE}.")
    unet_config = _config_without_meta(_read_json(folder, os.path.join("unet", "config.json")))
    scheduler_config = _read_json(folder, os.path.join("scheduler", "scheduler_config.json"))
    mean, std, extractor_path = _clip_normalisation(folder)
    files = {"feature_extractor": extractor_path}
    unet_path = _weights_file(folder, "unet", "diffusion_pytorch_model", dtype) if unet_variant == "svd" else None
    vae, files["vae"] = _load_vae(folder, dtype)
    image_encoder, files["image_encoder"] = _load_image_encoder(folder, dtype)
    with torch.device("meta"):
        unet = build_unet(unet_config, id_adapter=unet_variant == "stableanimator")
    if unet_path is not None:
        _strict_load(unet, load_state_dict_file(unet_path), "SVD UNet (UNetSpatioTemporalConditionModel)", unet_path)
        unet = _finish(unet, dtype)
        files["unet"] = unet_path
    return SVDBase(
        unet=unet, vae=vae, image_encoder=image_encoder,
        vae_scaling_factor=float(vae.config.get("scaling_factor", SVD_SCALING_FACTOR)), dtype=dtype,
        unet_variant=unet_variant, unet_config=unet_config, clip_mean=mean, clip_std=std,
        scheduler_config=scheduler_config, folder=folder, unet_loaded=unet_path is not None, files=files)


# ------------------------------------------------------------------------------ animation weights
def install_animation_weights(base: SVDBase, unet_state_dict: dict[str, torch.Tensor],
                              pose_net_state_dict: dict[str, torch.Tensor] | None = None,
                              source: str = "These UNet weights") -> SVDBase:
    """Put an animation UNet (unprefixed diffusers names) and optionally a PoseNet into `base`, strictly,
    converted to `base.dtype`. StableAnimator's UNet carries `...attn2.processor.id_to_{k,v}.weight`."""
    if base.unet_variant not in ANIMATION_FILES:
        raise MarionetteError(
            "This base was loaded with SVD's own UNet (unet_variant='svd').",
            "Load it with unet_variant='stableanimator' or 'mimicmotion' to use an animation UNet.")
    has_id = any(".processor.id_to_" in k for k in unet_state_dict)
    wants_id = base.unet_variant == "stableanimator"
    if has_id != wants_id:
        kind = "StableAnimator's (with ID adapter)" if has_id else "a UNet without the ID adapter (MimicMotion/SVD)"
        raise MarionetteError(
            f"{source} are {kind}, but the base was loaded for unet_variant='{base.unet_variant}'.",
            f"Load the base with unet_variant='{'stableanimator' if has_id else 'mimicmotion'}'.")
    with torch.device("meta"):
        unet = build_unet(base.unet_config, id_adapter=wants_id)
    _strict_load(unet, unet_state_dict, f"{base.unet_variant} UNet", source)
    base.unet, base.unet_loaded = _finish(unet, base.dtype), True
    if pose_net_state_dict is not None:
        base.pose_net = _finish(PoseNet.from_state_dict(pose_net_state_dict), base.dtype)
    return base


def load_animation_unet(base: SVDBase, checkpoint_path: str | os.PathLike,
                        pose_net_path: str | os.PathLike | None = None) -> SVDBase:
    """Load StableAnimator's `unet.pth` or a MimicMotion checkpoint into `base` (in place; also returned).

    A combined MimicMotion file (`MimicMotion_1-1.pth`, `MimicMotion-fp16.safetensors`) also gives the
    PoseNet; StableAnimator's `pose_net.pth` or `mimic_motion_pose_net.safetensors` go in `pose_net_path`."""
    if base.unet_variant not in ANIMATION_FILES:
        raise MarionetteError(
            "This base was loaded with SVD's own UNet (unet_variant='svd').",
            "Load it with unet_variant='stableanimator' or 'mimicmotion' to use an animation UNet.")
    variant, state_dict = load_checkpoint(checkpoint_path, allowed=ANIMATION_FILES[base.unet_variant])
    pose_state = None
    if variant == "mimicmotion":
        if pose_net_path is not None:
            raise MarionetteError(
                f"{os.path.basename(os.fspath(checkpoint_path))} already holds MimicMotion's PoseNet.",
                "Leave the PoseNet file out, or pick the UNet-only file (MimicMotionMergedUnet_*).")
        state_dict, pose_state = split_mimicmotion(state_dict)
    elif pose_net_path is not None:
        pose_state = load_checkpoint(pose_net_path, allowed=POSE_NET_FILES)[1]
    install_animation_weights(base, state_dict, pose_state, source=os.fspath(checkpoint_path))
    base.files["unet"] = os.fspath(checkpoint_path)
    if pose_net_path is not None:
        base.files["pose_net"] = os.fspath(pose_net_path)
    return base
