"""The SVD-xt base model from its diffusers folder, and the StableAnimator / MimicMotion UNets on top of it.

Both animation models reuse SVD-xt's VAE (`AutoencoderKLTemporalDecoder`), CLIP image encoder
(`CLIPVisionModelWithProjection`, ViT-H/14, 1024-d `image_embeds`), feature-extractor and scheduler
configs; their own checkpoints replace the UNet entirely (MimicMotion builds its UNet from
`unet/config.json` only and never reads SVD's UNet weights). So `load_svd_base` loads SVD's UNet weights
only for `unet_variant="svd"`; for the animation variants the UNet is left to the pipeline layer
(`pipelines.svd_models.load_animation_unet`), which builds it from the folder's config on the meta
device and fills it strictly with the paper's weights.

Nothing touches the network: modules are built from the shipped JSON configs and the weights are read
with safetensors, then loaded with `load_state_dict(strict=True, assign=True)`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.checkpoints import load_state_dict_file
from ..core.configs import read_json, without_meta
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError
from .conditioning import vae_downsampling
from .unet import PoseSVDUNet, build_unet

SVD_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
SVD_FOLDER_NAMES = "stable-video-diffusion-img2vid-xt or stable-video-diffusion-img2vid-xt-1-1"
SVD_SCALING_FACTOR = 0.18215  # SVD's vae/config.json; used when a config omits it
UNET_VARIANTS = ("svd", "stableanimator", "mimicmotion")

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

@dataclass
class SVDBase:
    """The loaded SVD-xt parts (all on the CPU, in `dtype`, eval mode).

    `unet` holds weights when `unet_loaded`; for the animation variants it is None until the paper's
    weights are installed, which also sets `pose_net`."""
    unet: PoseSVDUNet | None  # None until the animation weights are installed (animation variants)
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
    pose_net: nn.Module | None = None  # MimicMotion's PoseNet, set with the animation weights
    files: dict[str, str] = field(default_factory=dict)  # what was read, by part

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SVD)."""
        return vae_downsampling(self.vae)


# ----------------------------------------------------------------------------------------- folder
def _missing(folder: str, what: str) -> MarionetteError:
    return MarionetteError(
        f"The SVD-xt folder {folder} has no {what}. Expected layout: {LAYOUT}.",
        f"Point to the complete {SVD_FOLDER_NAMES} folder. {WHERE}.")


def _read_json(folder: str, relative: str) -> dict:
    path = os.path.join(folder, relative)
    return read_json(path, f"The SVD-xt folder {folder} has no {relative}. Expected layout: {LAYOUT}.",
                     f"Point to the complete {SVD_FOLDER_NAMES} folder. {WHERE}.")


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


def _fill(module: nn.Module, state_dict: dict, label: str, source: str, dtype: torch.dtype) -> nn.Module:
    return strict_fill(module, state_dict, label, source, f"Use the files of the {SVD_FOLDER_NAMES} release. {WHERE}.",
                       dtype)


def _load_vae(folder: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    from diffusers import AutoencoderKLTemporalDecoder
    config = _read_json(folder, os.path.join("vae", "config.json"))
    path = _weights_file(folder, "vae", "diffusion_pytorch_model", dtype)
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder.from_config(without_meta(config))
    return _fill(vae, load_state_dict_file(path), "SVD VAE (AutoencoderKLTemporalDecoder)", path, dtype), path


def _load_image_encoder(folder: str, dtype: torch.dtype) -> tuple[nn.Module, str]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    config = _read_json(folder, os.path.join("image_encoder", "config.json"))
    path = _weights_file(folder, "image_encoder", "model", dtype)
    clip_config = CLIPVisionConfig.from_dict(without_meta(config))
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(clip_config)
    label = "CLIP image encoder (CLIPVisionModelWithProjection)"
    return _fill(encoder, load_state_dict_file(path), label, path, dtype), path


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


def load_svd_base(folder: str | os.PathLike, dtype: torch.dtype = torch.float16,
                  unet_variant: str = "svd") -> SVDBase:
    """Load SVD-xt's VAE, CLIP image encoder and UNet from a diffusers folder (offline, strict).

    `unet_variant`: "svd" loads SVD's own UNet weights; "stableanimator" and "mimicmotion" leave the UNet
    out (their checkpoints replace it whole; `unet_config` keeps `unet/config.json`)."""
    folder = os.fspath(folder)
    dtype = check_dtype(dtype, "SVD models")
    if unet_variant not in UNET_VARIANTS:
        raise MarionetteError(f"Unknown UNet variant '{unet_variant}'.", f"Use one of: {', '.join(UNET_VARIANTS)}.")
    if not os.path.isdir(folder):
        raise MarionetteError(f"The SVD-xt folder {folder} does not exist. Expected layout: {LAYOUT}.",
                              f"Point to the {SVD_FOLDER_NAMES} folder. {WHERE}.")
    unet_config = without_meta(_read_json(folder, os.path.join("unet", "config.json")))
    scheduler_config = _read_json(folder, os.path.join("scheduler", "scheduler_config.json"))
    mean, std, extractor_path = _clip_normalisation(folder)
    files = {"feature_extractor": extractor_path}
    unet_path = _weights_file(folder, "unet", "diffusion_pytorch_model", dtype) if unet_variant == "svd" else None
    vae, files["vae"] = _load_vae(folder, dtype)
    image_encoder, files["image_encoder"] = _load_image_encoder(folder, dtype)
    unet = None
    if unet_path is not None:
        with torch.device("meta"):
            unet = build_unet(unet_config)
        unet = _fill(unet, load_state_dict_file(unet_path), "SVD UNet (UNetSpatioTemporalConditionModel)", unet_path,
                     dtype)
        files["unet"] = unet_path
    return SVDBase(
        unet=unet, vae=vae, image_encoder=image_encoder,
        vae_scaling_factor=float(vae.config.get("scaling_factor", SVD_SCALING_FACTOR)), dtype=dtype,
        unet_variant=unet_variant, unet_config=unet_config, clip_mean=mean, clip_std=std,
        scheduler_config=scheduler_config, folder=folder, unet_loaded=unet_path is not None, files=files)
