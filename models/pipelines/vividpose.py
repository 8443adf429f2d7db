"""The VividPose animation pipeline on the shared SVD sampler.

Order of work:
1. CLIP embedding of the reference; identity tokens from the ArcFace embedding (zeros without a face);
   context [CLIP | identity], zeros for the unconditional pass.
2. One generator seeded with `seed` draws the reference's noise augmentation, then the start latents.
3. The ReferenceNet runs once on the clean reference latent -> f_r.
4. f_pose = τ1(render) + τ2(skeleton) for every frame, in chunks.
5. EDM sampling over overlapping windows (`svd.sampler.sample`, per-frame CFG ramp): the conditional pass
   sees f_r, the identity tokens and f_pose; the unconditional pass sees none of the reference (zero
   latent, zero context, no f_r) and no pose, as SVD's image-conditioning dropout.
6. Chunked decode with the temporal VAE decoder.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from ..errors import MarionetteError
from ..svd.conditioning import (CLIP_MEAN, CLIP_STD, clip_image_embedding, images_to_nchw, reference_latent,
                                vae_downsampling)
from ..svd.sampler import SamplerSettings, sample, seeded_generator
from ..vividpose.model import VividPose
from .svd_animation import AnimationResult, check_sizes, decode_video

DECODE_CHUNK = 8
POSE_CHUNK = 16  # frames per pose-controller call


class VividPoseAnimation(nn.Module):
    """A VividPose model with the SVD VAE and CLIP image encoder it runs with, as one module a host moves
    and offloads as a whole (the plain-container rule of `svd_animation.SVDAnimation`)."""

    animation = "vividpose"

    def __init__(self, model: VividPose, vae: nn.Module, image_encoder: nn.Module, vae_scaling_factor: float,
                 clip_mean, clip_std, dtype: torch.dtype, tiny: bool, files: dict | None = None):
        super().__init__()
        self.model, self.vae, self.image_encoder = model, vae, image_encoder
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.clip_mean, self.clip_std = tuple(clip_mean), tuple(clip_std)
        self.dtype_, self.tiny, self.files = dtype, tiny, dict(files or {})

    def get_dtype(self) -> torch.dtype:
        return self.dtype_

    @property
    def unet(self) -> nn.Module:
        """The denoiser (for memory estimates that look for `.unet`)."""
        return self.model.unet


class _Denoiser:
    """The sampler's UNet callable: the conditional pass (recognised by its context) attends to the
    reference features; the unconditional pass does not."""

    def __init__(self, model: VividPose, cond: torch.Tensor, features: dict, id_scale: float):
        self.model, self.cond, self.features, self.id_scale = model, cond, features, id_scale

    def __call__(self, sample_in, timestep, encoder_hidden_states, added_time_ids, pose_features=None,
                 return_dict=False):
        features = self.features if encoder_hidden_states is self.cond else None
        with self.model.reference_attention(features), self.model.id_scale(self.id_scale):
            return self.model(sample_in, timestep, encoder_hidden_states, added_time_ids,
                              pose_features=pose_features, return_dict=return_dict)


def size_multiple(net: VividPoseAnimation) -> int:
    """What both sides of the video must be a multiple of: the VAE's downsampling times the UNet's."""
    return vae_downsampling(net.vae) * 2 ** (len(net.model.config.unet["block_out_channels"]) - 1)


def _face_tokens(model: VividPose, face_embedding, clip: torch.Tensor) -> torch.Tensor | None:
    if face_embedding is None:
        return None
    if model.id_controller is None:
        raise MarionetteError("This VividPose model was trained without the identity controller, so it cannot "
                              "use a face embedding.", "Disconnect the face input (the model says so when loaded).")
    embedding = torch.as_tensor(face_embedding, dtype=torch.float32).reshape(1, -1).to(clip.device)
    return model.identity_tokens(embedding).to(clip.dtype)


def pose_features(model: VividPose, render: torch.Tensor, skeleton: torch.Tensor, device, dtype,
                  check: Callable[[], None]) -> torch.Tensor:
    """f_pose for IMAGE batches [F, H, W, 3] of renders and skeletons, POSE_CHUNK frames per call."""
    pieces = []
    for start in range(0, skeleton.shape[0], POSE_CHUNK):
        check()
        chunk = slice(start, start + POSE_CHUNK)
        pieces.append(model.pose_features(images_to_nchw(render[chunk]).to(device, dtype),
                                          images_to_nchw(skeleton[chunk]).to(device, dtype)))
    return torch.cat(pieces)


def animate_vividpose(net: VividPoseAnimation, reference: torch.Tensor, skeleton_images: torch.Tensor,
                      render_images: torch.Tensor, settings: SamplerSettings, *, device: torch.device,
                      face_embedding=None, id_scale: float = 1.0, decode_chunk: int | None = None,
                      noise_device: torch.device | str | None = None,
                      on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                      check: Callable[[], None] | None = None) -> AnimationResult:
    """Animate `reference` (IMAGE [1, H, W, 3]) along skeleton (τ2) and body-render (τ1) frames (IMAGE
    [F, H, W, 3] each, at the reference size). `face_embedding`: the reference's raw 512-d ArcFace
    embedding, or None (zero identity tokens). The modules must already be on `device`; `on_step(done,
    total, x0)` after each step, `check()` between chunks of work (raise there to cancel)."""
    check = check or (lambda: None)
    if settings.drop_first_frame:
        raise MarionetteError("VividPose has no anchor frame to drop.", "Use drop_first_frame=False.")
    multiple = size_multiple(net)
    check_sizes(reference, skeleton_images, multiple)
    check_sizes(reference, render_images, multiple)
    if render_images.shape[0] != skeleton_images.shape[0]:
        raise MarionetteError(f"{render_images.shape[0]} render frames for {skeleton_images.shape[0]} skeleton frames.",
                              "Render both from the same body sequence (RenderGuidance gives both).")
    model, dtype = net.model, net.get_dtype()
    reference = reference.float().cpu()
    with torch.no_grad():
        clip = clip_image_embedding(net.image_encoder, reference, net.clip_mean, net.clip_std).to(dtype)
        cond = model.context(clip, _face_tokens(model, face_embedding, clip))
        generator = seeded_generator(settings.seed, noise_device or device)
        ref_latent = reference_latent(net.vae, reference, 1, settings.noise_aug_strength, generator, dtype)[0, 0]
        clean = ref_latent if settings.noise_aug_strength == 0 else reference_latent(
            net.vae, reference, 1, 0.0, torch.Generator(device=generator.device), dtype)[0, 0]
        check()
        features = model.reference_features(clean.unsqueeze(0), clip)
        poses = pose_features(model, render_images, skeleton_images, device, dtype, check)
    denoiser = _Denoiser(model, cond, features, id_scale)
    latents = sample(denoiser, cond, torch.zeros_like(cond) if settings.uses_cfg else None, ref_latent, poses,
                     settings, on_step=on_step, generator=generator, latent_channels=model.config.latent_channels)
    frames = decode_video(net, latents, decode_chunk or DECODE_CHUNK, check)
    return AnimationResult(frames, latents / net.vae_scaling_factor)


def tiny_vividpose_animation(seed: int = 0, dtype: torch.dtype = torch.float32, **config) -> VividPoseAnimation:
    """The tiny random VividPose with the tiny SVD VAE and CLIP encoder: the no-download path."""
    from ..vividpose.config import tiny_config
    from ..vividpose.tiny import tiny_vividpose
    from .svd_tiny import tiny_animation_model
    base = tiny_animation_model("mimicmotion", seed=seed, dtype=dtype)
    model = tiny_vividpose(seed, tiny_config(**config), dtype)
    return VividPoseAnimation(model, base.vae, base.image_encoder, base.vae_scaling_factor, base.clip_mean,
                              base.clip_std, dtype, tiny=True)


def load_vividpose_animation(checkpoint: str | os.PathLike, svd_folder_or_file: str | os.PathLike | None,
                             dtype: torch.dtype = torch.float16) -> VividPoseAnimation:
    """A trained VividPose checkpoint with the VAE and CLIP image encoder it was trained with: the ones it
    bundles, or else SVD-xt's (diffusers folder or ComfyUI's single file; SVD's own UNet weights are not
    read, the checkpoint holds VividPose's)."""
    from ..svd.base import load_svd_base
    from ..vividpose.checkpoint import load_companions, load_vividpose
    model = load_vividpose(checkpoint, dtype)
    bundled = load_companions(checkpoint, dtype)
    if set(bundled) == {"vae", "image_encoder"}:
        extras = model.config.extras
        return VividPoseAnimation(model, bundled["vae"], bundled["image_encoder"],
                                  bundled["vae"].config.scaling_factor, extras.get("clip_mean", CLIP_MEAN),
                                  extras.get("clip_std", CLIP_STD), dtype, tiny=False,
                                  files={"vividpose": os.fspath(checkpoint)})
    if svd_folder_or_file is None:
        raise MarionetteError(f"{os.path.basename(os.fspath(checkpoint))} does not bundle its VAE and image encoder.",
                              "Choose the SVD-xt folder or file it was trained with (stable-video-diffusion-img2vid-xt).")
    path = os.fspath(svd_folder_or_file)
    if os.path.isfile(path):
        from ..svd.single_file import load_svd_single_file
        base = load_svd_single_file(path, dtype=dtype, unet_variant="mimicmotion")
    else:
        base = load_svd_base(path, dtype=dtype, unet_variant="mimicmotion")
    if base.image_encoder.config.projection_dim != model.config.context_dim:
        raise MarionetteError(f"The image encoder gives {base.image_encoder.config.projection_dim}-d embeddings but "
                              f"this VividPose reads {model.config.context_dim}-d ones.",
                              "Use the image encoder the model was trained with (see its config's extras).")
    files = dict(base.files, vividpose=os.fspath(checkpoint))
    return VividPoseAnimation(model, base.vae, base.image_encoder, base.vae_scaling_factor, base.clip_mean,
                              base.clip_std, dtype, tiny=False, files=files)
