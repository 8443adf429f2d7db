"""Full-size VividPose training from the user's pretrained models (the paper's initialisation).

The denoising UNet starts from Stable Video Diffusion img2vid-xt's UNet, the ReferenceNet from Stable
Diffusion 2.1's UNet; the VAE (`AutoencoderKLTemporalDecoder`) and the CLIP ViT-H image encoder are SVD's
and stay frozen. Nothing is downloaded: the SVD diffusers folder and the SD2.1 UNet file are the user's.

The SVD UNet is copied strictly: every tensor of VividPose's UNet must come from SVD's and vice versa,
except the identity controller's added cross-attention projections (`...attn2.processor.id_to_{q,k,v}
.weight`), which SVD lacks. Those are set by VividPose's own rule again after the copy (query and key as
the layer's now-pretrained to_q / to_k, value zero), so the identity branch starts as a no-op on SVD.
"""
from __future__ import annotations

import os

import torch

from ..errors import MarionetteError
from ..svd.base import SVDBase, load_svd_base
from ..vividpose.attention import DecoupledIDAttnProcessor
from ..vividpose.checkpoint import check_keys
from ..vividpose.model import VividPose, cross_attentions
from ..vividpose.sd21 import init_reference_net_from_sd21

ID_PROCESSOR_KEYS = ("processor.id_to_q.weight", "processor.id_to_k.weight", "processor.id_to_v.weight")
FIX = ("Use the UNet of stable-video-diffusion-img2vid-xt (its unet/ folder, with the config.json that came "
       "with it).")


def is_id_processor_key(name: str) -> bool:
    return name.endswith(ID_PROCESSOR_KEYS)


def load_svd_parts(folder: str) -> SVDBase:
    """SVD-xt's UNet, VAE and CLIP image encoder from the diffusers folder, in float32 (the trainer's
    master weights; mixed precision is autocast's job), frozen."""
    return load_svd_base(folder, dtype=torch.float32, unet_variant="svd")


def init_unet_from_svd(model: VividPose, svd_state: dict[str, torch.Tensor], source: str) -> VividPose:
    """Copy SVD's UNet tensors into `model.unet` (in place; also returned), refusing by name any tensor
    missing, extra or shaped otherwise; the identity projections are re-derived from the copied layers."""
    unet = model.unet
    expected = {k: tuple(v.shape) for k, v in unet.state_dict().items() if not is_id_processor_key(k)}
    check_keys(expected, {k: tuple(v.shape) for k, v in svd_state.items()}, source,
               "VividPose's denoising UNet (the SVD-xt layout)", FIX)
    dtype = next(unet.parameters()).dtype
    with torch.no_grad():
        # not strict only for the identity projections: check_keys refused every other difference
        unet.load_state_dict({k: v.to(dtype) for k, v in svd_state.items()}, strict=False)
        for attn in cross_attentions(unet).values():
            processor = attn.processor
            if isinstance(processor, DecoupledIDAttnProcessor):
                processor.id_to_q.weight.copy_(attn.to_q.weight)
                processor.id_to_k.weight.copy_(attn.to_k.weight)
                processor.id_to_v.weight.zero_()
    return model


def initialise_full_size(model: VividPose, base: SVDBase, sd21: str = "") -> VividPose:
    """The paper's init of a freshly built full-size `model`: UNet from `base.unet` (which is released
    afterwards, it is a second copy of 1.5 B parameters), ReferenceNet from the SD2.1 UNet file `sd21`
    (random when empty)."""
    if base.unet is None:
        raise MarionetteError("The SVD parts were loaded without SVD's UNet weights.",
                              "Load them with load_svd_parts (unet_variant 'svd').")
    projection = int(base.image_encoder.config.projection_dim)
    if projection != model.config.context_dim:
        raise MarionetteError(f"The SVD folder's image encoder gives {projection}-d embeddings but its UNet "
                              f"reads {model.config.context_dim}-d ones.",
                              "Use an unmodified stable-video-diffusion-img2vid-xt folder.")
    source = base.files.get("unet", os.path.join(base.folder, "unet"))
    init_unet_from_svd(model, base.unet.state_dict(), os.path.basename(source))
    base.unet = None
    if sd21:
        init_reference_net_from_sd21(model, sd21)
    return model
