"""Checkpoint files of the SVD animation models (MimicMotion, StableAnimator, SVD-xt): recognising which
released file a state dict is, and checking that it holds every tensor it should. Files are read by
`core.checkpoints` (safetensors or weights-only pickles).

Recognised layouts (`VARIANTS`):
- StableAnimator (HF FrancisRing/StableAnimator, `Animation/`): `unet.pth` (1460 = 1428 SVD UNet
  tensors + 32 ID-adapter `...attn2.processor.id_to_{k,v}.weight`), `pose_net.pth` (19),
  `face_encoder.pth` (56); no key prefix.
- MimicMotion: `MimicMotion_1(-1).pth` and kijai's `MimicMotion-fp16.safetensors` (1428 `unet.*` +
  19 `pose_net.*`); kijai's fp16 repacks `MimicMotionMergedUnet_1-*-fp16.safetensors` (the 1428 UNet
  tensors, no prefix) and `mimic_motion_pose_net.safetensors` (the 19 PoseNet tensors, no prefix).
- The plain SVD-xt UNet in diffusers naming (1428), and ComfyUI's single-file `svd_xt*.safetensors`
  (`model.diffusion_model.*` in SGM naming with `first_stage_model.*`/`conditioner.*`; recognised only).

Two pairs are structurally identical, so only the file name can tell them apart: a bare PoseNet is
MimicMotion's when the name contains "mimic" (else StableAnimator's), and a bare UNet without ID
weights is MimicMotion's merged UNet when the name contains "mimic" (else the plain SVD UNet). Each
pair loads into the same module, so the label only informs messages.

Validation is by exact key NAMES (missing and unexpected tensors are counted and a few named), from
name lists generated at run time: the SVD UNet from diffusers' `UNetSpatioTemporalConditionModel`
built on the meta device with the SVD-xt config (~0.1 s, cached), the ID-adapter keys from its 16
spatial cross-attentions, the PoseNet from our `PoseNet`, the Face Encoder from its documented naming
pattern. Tensor shapes are enforced by the strict `load_state_dict` into each module.
"""
from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

import torch

from ..core.checkpoints import load_state_dict_file
from ..errors import MarionetteError
from ..mimicmotion.pose_net import PoseNet
from ..svd.configs import svd_xt_unet_config


class Variant(NamedTuple):
    summary: str  # what the file is, for messages
    files: str  # the released files with this layout
    count: int  # tensors it holds (0: not checked)


VARIANTS: dict[str, Variant] = {
    "stableanimator_unet": Variant(
        "the StableAnimator UNet (SVD UNet + ID adapter)", "Animation/unet.pth (FrancisRing/StableAnimator)", 1460),
    "stableanimator_pose_net": Variant(
        "the StableAnimator PoseNet", "Animation/pose_net.pth (FrancisRing/StableAnimator)", 19),
    "stableanimator_face_encoder": Variant(
        "the StableAnimator Face Encoder", "Animation/face_encoder.pth (FrancisRing/StableAnimator)", 56),
    "mimicmotion": Variant(
        "a MimicMotion checkpoint (UNet + PoseNet)",
        "MimicMotion_1-1.pth or MimicMotion_1.pth (tencent/MimicMotion), MimicMotion-fp16.safetensors "
        "(Kijai/MimicMotion_pruned)", 1447),
    "mimicmotion_unet": Variant(
        "the MimicMotion UNet without its PoseNet",
        "MimicMotionMergedUnet_1-1-fp16.safetensors or _1-0- (Kijai/MimicMotion_pruned)", 1428),
    "mimicmotion_pose_net": Variant(
        "the MimicMotion PoseNet", "mimic_motion_pose_net.safetensors (kijai/ComfyUI-MimicMotionWrapper)", 19),
    "svd_unet": Variant(
        "an SVD-xt UNet in diffusers naming",
        "stable-video-diffusion-img2vid-xt(-1-1)/unet/diffusion_pytorch_model(.fp16).safetensors", 1428),
    "svd_xt_single_file": Variant(
        "a single-file SVD checkpoint (UNet, VAE and CLIP vision in SGM naming)",
        "svd_xt.safetensors or svd_xt_1_1.safetensors (ComfyUI models/checkpoints)", 0),
}

UNET_PREFIX, POSE_NET_PREFIX = "unet.", "pose_net."
SINGLE_FILE_PREFIX = "model.diffusion_model."

ID_ADAPTER_CONTEXT_DIM = 1024  # id_to_k/v map the 1024-d face tokens to each block's width


# ------------------------------------------------------------------------------- expected keys
@functools.lru_cache(maxsize=1)
def _svd_unet_layout() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(SVD UNet keys -> shapes, ID-adapter keys -> shapes), from diffusers' class on the meta device."""
    from diffusers import UNetSpatioTemporalConditionModel
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**svd_xt_unet_config())
    base = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    adapter = {}
    for module_name, module in unet.named_modules():
        # spatial cross-attentions only: `<block>.attentions.<j>.transformer_blocks.0.attn2`
        if re.fullmatch(r".*attentions\.\d+\.transformer_blocks\.\d+\.attn2", module_name):
            width = module.to_out[0].out_features
            for kind in ("k", "v"):
                adapter[f"{module_name}.processor.id_to_{kind}.weight"] = (width, ID_ADAPTER_CONTEXT_DIM)
    return base, adapter


@functools.lru_cache(maxsize=1)
def _pose_net_layout() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = PoseNet()
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _face_encoder_names() -> list[str]:
    """The 56 names of `FusionFaceId.state_dict()` (identity MLP, norm, 4-layer perceiver)."""
    names = [f"{m}.{p}" for m in ("proj.0", "proj.2", "norm") for p in ("weight", "bias")]
    names += [f"fusion_model.{m}.{p}" for m in ("proj_in", "proj_out", "norm_out") for p in ("weight", "bias")]
    for i in range(4):
        layer = f"fusion_model.layers.{i}"
        names += [f"{layer}.0.{m}.{p}" for m in ("norm1", "norm2") for p in ("weight", "bias")]
        names += [f"{layer}.0.{m}.weight" for m in ("to_q", "to_kv", "to_out")]
        names += [f"{layer}.1.0.weight", f"{layer}.1.0.bias", f"{layer}.1.1.weight", f"{layer}.1.3.weight"]
    return names


def expected_keys(variant: str) -> dict[str, tuple[int, ...] | None]:
    """Every tensor name a file of this variant holds, with its shape where known (None: not known)."""
    if variant in ("svd_unet", "mimicmotion_unet"):
        return dict(_svd_unet_layout()[0])
    if variant == "stableanimator_unet":
        base, adapter = _svd_unet_layout()
        return {**base, **adapter}
    if variant in ("stableanimator_pose_net", "mimicmotion_pose_net"):
        return dict(_pose_net_layout())
    if variant == "stableanimator_face_encoder":
        return dict.fromkeys(_face_encoder_names())
    if variant == "mimicmotion":
        unet = {UNET_PREFIX + k: v for k, v in _svd_unet_layout()[0].items()}
        return {**unet, **{POSE_NET_PREFIX + k: v for k, v in _pose_net_layout().items()}}
    if variant == "svd_xt_single_file":
        raise MarionetteError("The single-file SVD layout is recognised but not validated key by key.",
                              "Check it by loading it into the converted model.")
    raise MarionetteError(f"Unknown checkpoint variant '{variant}'.", f"Use one of: {', '.join(VARIANTS)}.")


# ----------------------------------------------------------------------------------- detection
def detect_variant(state_dict: Mapping[str, torch.Tensor], name: str = "") -> str:
    """Which released file this state dict is (a key of `VARIANTS`), after checking it holds exactly
    that file's tensors. `name` (the file name) separates the structurally identical pairs."""
    keys = list(state_dict)
    label = name or "This checkpoint"
    family = _family(keys)
    if family is None:
        raise _unknown(keys, label)
    if family == "single_file":
        if not any(k.startswith(SINGLE_FILE_PREFIX) and (".time_stack." in k or ".time_mixer." in k) for k in keys):
            raise MarionetteError(
                f"{label} is a single-file Stable Diffusion checkpoint without temporal layers, not SVD.",
                f"Pick a video model: {_expected_files()}.")
        return "svd_xt_single_file"
    variant = _variant_in_family(family, keys, name)
    _check_names(keys, variant, label)
    return variant


def _family(keys: list[str]) -> str | None:
    def has(*prefixes):
        return any(k.startswith(prefixes) for k in keys)
    if has(SINGLE_FILE_PREFIX):
        return "single_file"
    if has(UNET_PREFIX, POSE_NET_PREFIX):
        return "mimicmotion"
    if has("conv_in.", "time_embedding.", "add_embedding.", "down_blocks.", "mid_block.", "up_blocks."):
        return "unet"
    if has("conv_layers.", "final_proj."):
        return "pose_net"
    if has("fusion_model.", "proj.0."):
        return "face_encoder"
    return None


def _variant_in_family(family: str, keys: list[str], name: str) -> str:
    from_mimicmotion = "mimic" in os.path.basename(name).lower()
    if family == "unet":
        if any(".processor.id_to_" in k for k in keys):
            return "stableanimator_unet"
        return "mimicmotion_unet" if from_mimicmotion else "svd_unet"
    if family == "pose_net":
        return "mimicmotion_pose_net" if from_mimicmotion else "stableanimator_pose_net"
    if family == "face_encoder":
        return "stableanimator_face_encoder"
    return "mimicmotion"


def _check_names(keys: list[str], variant: str, label: str) -> None:
    info = VARIANTS[variant]
    expected = expected_keys(variant)
    if len(expected) != info.count:  # guards against a diffusers release that renames the SVD UNet
        raise MarionetteError(
            f"The installed diffusers builds an SVD UNet with {len(expected)} tensors where "
            f"{info.summary} has {info.count}.", "Install the diffusers version from requirements.txt.")
    present = set(keys)
    missing = [k for k in expected if k not in present]
    unexpected = [k for k in keys if k not in expected]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    raise MarionetteError(
        f"{label} does not hold exactly the tensors of {info.summary}: it has {len(keys)} instead of "
        f"{info.count}, "
        f"{'; '.join(parts)}.",
        f"The file is incomplete or was saved differently; use the released file: {info.files}.")


_FOREIGN_HINTS = (
    ("controlnet_cond_embedding.", "a ControlNet (e.g. DisPose.pth), which is loaded elsewhere"),
    ("vision_model.", "a CLIP vision encoder"),
    ("encoder.down_blocks.", "a VAE"),
    ("module.", "weights saved from a wrapped model (every name starts with 'module.')"),
)


def _unknown(keys: list[str], label: str) -> MarionetteError:
    prefixes: dict[str, int] = {}
    for key in keys:
        head = key.split(".", 1)[0] + "."
        prefixes[head] = prefixes.get(head, 0) + 1
    looks = ", ".join(f"{p} ({n})" for p, n in sorted(prefixes.items(), key=lambda kv: -kv[1])[:5])
    hint = next((text for prefix, text in _FOREIGN_HINTS if keys and keys[0].startswith(prefix)), None)
    return MarionetteError(
        f"{label} is not a StableAnimator, MimicMotion or SVD checkpoint"
        + (f"; it looks like {hint}" if hint else "")
        + f": {len(keys)} tensors, name prefixes {looks}; first names {', '.join(keys[:3])}.",
        f"Expected one of: {_expected_files()}.")


def _expected_files() -> str:
    return "; ".join(v.files for v in VARIANTS.values())


# ------------------------------------------------------------------------------------- helpers
def split_mimicmotion(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                        dict[str, torch.Tensor]]:
    """A combined MimicMotion checkpoint -> (UNet tensors, PoseNet tensors) without their prefixes;
    the tensors are shared, not copied. Anything but the full 1428 + 19 tensors is an error."""
    variant = detect_variant(state_dict)
    if variant != "mimicmotion":
        raise MarionetteError(
            f"This is {VARIANTS[variant].summary}, not a combined MimicMotion checkpoint.",
            f"Load it directly, or use {VARIANTS['mimicmotion'].files}.")
    unet = {k[len(UNET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    pose_net = {k[len(POSE_NET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(POSE_NET_PREFIX)}
    return unet, pose_net


def load_checkpoint(path: str | os.PathLike, allowed: tuple[str, ...] | None = None,
                    ) -> tuple[str, dict[str, torch.Tensor]]:
    """Load a file and recognise it: (variant, state dict). With `allowed`, any other variant is an
    error that says what the file is and which files fit."""
    state_dict = load_state_dict_file(path)
    name = os.path.basename(os.fspath(path))
    variant = detect_variant(state_dict, name)
    if allowed is not None and variant not in allowed:
        wanted = "; ".join(f"{VARIANTS[v].summary} ({VARIANTS[v].files})" for v in allowed)
        raise MarionetteError(f"{name} is {VARIANTS[variant].summary}, which does not fit here.",
                              f"Pick {wanted}.")
    return variant, state_dict
