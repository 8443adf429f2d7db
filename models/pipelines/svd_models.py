"""Loading the SVD animation models: SVD-xt's parts plus a paper's UNet and PoseNet (MimicMotion,
StableAnimator), and StableAnimator's Face Encoder. Files are recognised by their tensor names
(`svd_checkpoints`) and filled strictly."""
from __future__ import annotations

import os

import torch

from ..core.modules import finish, strict_fill
from ..errors import MarionetteError
from ..mimicmotion.pose_net import PoseNet
from ..stableanimator.face_encoder import FaceEncoder
from ..stableanimator.unet import build_stableanimator_unet
from ..svd.base import SVDBase
from ..svd.unet import PoseSVDUNet, build_unet
from .svd_checkpoints import VARIANTS, load_checkpoint, split_mimicmotion

# Which animation checkpoints fit which UNet variant (keys of svd_checkpoints.VARIANTS).
ANIMATION_FILES = {
    "stableanimator": ("stableanimator_unet",),
    "mimicmotion": ("mimicmotion", "mimicmotion_unet"),
}
POSE_NET_FILES = ("stableanimator_pose_net", "mimicmotion_pose_net")


def build_animation_unet(config: dict, variant: str) -> PoseSVDUNet:
    """The UNet of `variant`: StableAnimator's carries the ID adapter, MimicMotion's is the plain SVD UNet."""
    return build_stableanimator_unet(config) if variant == "stableanimator" else build_unet(config)


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
        unet = build_animation_unet(base.unet_config, base.unet_variant)
    fix = f"Use the released file: {VARIANTS[ANIMATION_FILES[base.unet_variant][0]].files}."
    base.unet = strict_fill(unet, unet_state_dict, f"{base.unet_variant} UNet", source, fix, base.dtype)
    base.unet_loaded = True
    if pose_net_state_dict is not None:
        base.pose_net = finish(PoseNet.from_state_dict(pose_net_state_dict), base.dtype)
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


def load_face_encoder(path: str, dtype: torch.dtype = torch.float32) -> FaceEncoder:
    """The released `Animation/face_encoder.pth`, loaded strictly into the official-size FaceEncoder."""
    _, state_dict = load_checkpoint(path, allowed=("stableanimator_face_encoder",))
    with torch.device("meta"):
        encoder = FaceEncoder()
    return strict_fill(encoder, state_dict, "StableAnimator Face Encoder", os.fspath(path),
                       f"Use {VARIANTS['stableanimator_face_encoder'].files}.", dtype)
