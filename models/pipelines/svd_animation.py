"""The SVD animation pipeline: MimicMotion or StableAnimator on SVD-xt, with StableAnimator's identity
tokens and HJB face refinement, or DisPose's ControlNet, as the official pipelines run them.

Order of work (the official `__call__` + inference scripts):
1. CLIP embedding of the reference; contexts (StableAnimator: CLIP + 4 face tokens, zeros unconditional).
2. One generator seeded with `seed` draws the reference's noise augmentation, then the start latents.
3. PoseNet features of every sampled frame (MimicMotion: the reference's own pose first, as an anchor).
4. EDM sampling over overlapping windows (`svd.sampler.sample`), HJB refinement hooked in.
5. Decoding of ALL sampled frames in chunks (the temporal decoder mixes frames within a chunk), then
   MimicMotion's anchor image is dropped.
The latents handed back are in the VAE's raw latent space (ComfyUI's LATENT convention): the sampler's
latents divided by the VAE scaling factor, anchor dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import MarionetteError
from ..mimicmotion.pose_net import pose_images_to_input
from ..stableanimator.face_encoder import null_unet_context, unet_context
from ..stableanimator.hjb import FaceRefiner, RefineSettings, face_boxes, refine_window
from ..stableanimator.id_adapter import NUM_FACE_TOKENS
from ..svd.conditioning import clip_image_embedding, decode_latents, reference_latent
from ..svd.sampler import SamplerSettings, sample, seeded_generator
from .dispose import DisPoseGuidance, frame_inputs

SIZE_MULTIPLE = 64
POSE_NET_CHUNK = 16  # pose frames per PoseNet call, so long videos do not hold every activation at once
DECODE_CHUNKS = {"stableanimator": 4, "mimicmotion": 8}  # the official scripts' decode_chunk_size


class SVDAnimation(nn.Module):
    """Everything one animation model needs, in one module so a host can move and offload it as a whole.

    A plain container: ComfyUI's ModelPatcher writes `.device` onto the module it wraps, which diffusers
    models refuse (read-only property). Shared by every use of the model, so it holds no per-reference
    state (face tokens travel separately)."""

    def __init__(self, base, animation: str, tiny: bool):
        super().__init__()
        self.unet, self.pose_net = base.unet, base.pose_net
        self.vae, self.image_encoder = base.vae, base.image_encoder
        self.animation, self.tiny = animation, tiny
        self.dtype_ = base.dtype
        self.vae_scaling_factor = base.vae_scaling_factor
        self.clip_mean, self.clip_std = base.clip_mean, base.clip_std
        self.files = dict(base.files)

    def get_dtype(self) -> torch.dtype:
        return self.dtype_


@dataclass
class FaceRefine:
    """StableAnimator's HJB face refinement request."""
    embedder: nn.Module          # ArcFace R100
    reference: torch.Tensor      # [D] reference face embedding
    target_masks: torch.Tensor   # [F, H, W] one face mask per output frame
    settings: RefineSettings
    tiny: bool                   # the tiny random R100 (fits only the tiny test model)
    window: str = "single"       # "single": all frames in one UNet window (official); "tiles": the sampler's


@dataclass
class AnimationResult:
    frames: torch.Tensor         # [F, H, W, 3] float in [0, 1]
    latents: torch.Tensor        # [F, 4, h, w] in the VAE's raw latent space
    face_losses: list[list[float]] = field(default_factory=list)  # per refined step, per Adam iteration


def check_sizes(reference: torch.Tensor, poses: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """(H, W) of a one-frame reference and same-sized pose frames, both sides multiples of `multiple` (64
    for SVD-xt: the VAE's 8x times the UNet's three 2x downsamplings)."""
    if reference.ndim != 4 or reference.shape[0] != 1:
        frames = reference.shape[0] if reference.ndim == 4 else "?"
        raise MarionetteError(f"The reference image must be one frame; got {frames}.",
                              "Pick one frame with ImageFromBatch (or connect LoadReference).")
    height, width = int(reference.shape[1]), int(reference.shape[2])
    if height % multiple or width % multiple:
        raise MarionetteError(f"The reference is {width}x{height}; the video size must be a multiple of "
                              f"{multiple} on both sides.",
                              "Resize it with LoadReference or ImageScale (e.g. 576x1024 or 512x768).")
    if poses.ndim != 4 or poses.shape[0] < 1:
        raise MarionetteError(f"pose_images must be an IMAGE batch of frames; got shape {tuple(poses.shape)}.",
                              "Connect the skeleton output of PoseAlign or DWPoseExtract.")
    pose_h, pose_w = int(poses.shape[1]), int(poses.shape[2])
    if (pose_h, pose_w) != (height, width):
        raise MarionetteError(
            f"The pose frames are {pose_w}x{pose_h} but the reference image is {width}x{height}; they must "
            "be the same size.",
            "Draw the poses at the reference size: connect the reference to PoseAlign's reference_image, or "
            f"scale the pose frames to {width}x{height} with ImageScale.")
    return height, width


def default_decode_chunk(animation: str) -> int:
    return DECODE_CHUNKS[animation]


def animate_svd(model: SVDAnimation, reference: torch.Tensor, pose_images: torch.Tensor, settings: SamplerSettings,
                *, device: torch.device, reference_pose: torch.Tensor | None = None,
                face_tokens: torch.Tensor | None = None, dispose: DisPoseGuidance | None = None,
                refine: FaceRefine | None = None, decode_chunk: int | None = None,
                noise_device: torch.device | str | None = None,
                on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                check: Callable[[], None] | None = None) -> AnimationResult:
    """Animate `reference` (IMAGE [1, H, W, 3]) along `pose_images` (IMAGE [F, H, W, 3]).

    The model's modules must already be on `device`. `reference_pose` (MimicMotion): the reference's own
    skeleton, the anchor frame (default: the first pose frame). `face_tokens` [1, 4, C]: StableAnimator's
    identity (zeros when None, the official no-face behaviour). `decode_chunk`: frames per VAE call
    (default: the official script's, `DECODE_CHUNKS`). `noise_device`: the generator's device (default
    `device`, as the official scripts: same seed + same device gives their noise). `on_step(done, total,
    x0)` is called after each step; `check()` between chunks of work (raise there to cancel)."""
    check = check or (lambda: None)
    size = check_sizes(reference, pose_images)
    poses = pose_images
    if model.animation == "mimicmotion":
        anchor = pose_images[:1] if reference_pose is None else reference_pose[:1]
        check_sizes(reference, anchor)
        poses = torch.cat([anchor.to(pose_images.device), pose_images])
    dtype = model.get_dtype()
    unet, extra = _controlled_unet(model, dispose, poses.shape[0], size)
    refiner = None if refine is None else _face_refiner(model, refine, pose_images, device, check)
    if refine is not None:
        settings = refine_window(settings, refine.window, poses.shape[0])

    reference = reference.float().cpu()
    clip = clip_image_embedding(model.image_encoder, reference, model.clip_mean, model.clip_std)
    cond, uncond = _contexts(model, clip, face_tokens)
    generator = seeded_generator(settings.seed, noise_device or device)
    ref_latent = reference_latent(model.vae, reference, 1, settings.noise_aug_strength, generator, dtype)[0, 0]
    pose_features = _pose_features(model, poses, device, dtype, check)
    latents = sample(unet or model.unet, cond, uncond if settings.uses_cfg else None, ref_latent, pose_features,
                     settings, on_step=on_step, refine=refiner, frame_inputs=extra, generator=generator)

    frames = decode_video(model, latents, decode_chunk or default_decode_chunk(model.animation), check)
    keep = 1 if settings.drop_first_frame else 0
    raw = latents[keep:] / model.vae_scaling_factor
    return AnimationResult(frames[keep:], raw, [] if refiner is None else refiner.losses)


def decode_video(model: SVDAnimation, latents: torch.Tensor, chunk: int,
                 check: Callable[[], None] | None = None) -> torch.Tensor:
    """UNet-space latents [F, 4, h, w] -> frames [F, H, W, 3], `chunk` frames per temporal-decoder call."""
    pieces = []
    for start in range(0, latents.shape[0], chunk):
        if check is not None:
            check()
        pieces.append(decode_latents(model.vae, latents[start:start + chunk], chunk, model.vae_scaling_factor))
    return torch.cat(pieces)


def _contexts(model: SVDAnimation, clip: torch.Tensor, face_tokens):
    """(cond, uncond) UNet contexts. StableAnimator without face tokens gets zeros in their place (the
    face branch then adds only the image-attention mean, as in its unconditional pass)."""
    if model.animation != "stableanimator":
        return clip, torch.zeros_like(clip)
    if face_tokens is None:
        face_tokens = clip.new_zeros(clip.shape[0], NUM_FACE_TOKENS, clip.shape[-1])
    face_tokens = face_tokens.to(clip.device, clip.dtype)
    return unet_context(clip, face_tokens), null_unet_context(clip, face_tokens)


def _face_refiner(model: SVDAnimation, refine: FaceRefine, pose_images: torch.Tensor, device,
                  check: Callable[[], None]) -> FaceRefiner:
    """The sampler's HJB hook: one face box per sampled frame (MimicMotion's anchor frame has none)."""
    frames, size = int(pose_images.shape[0]), (int(pose_images.shape[1]), int(pose_images.shape[2]))
    if refine.target_masks.shape[0] != frames:
        raise MarionetteError(f"HJB Face Refine has {refine.target_masks.shape[0]} target face masks for {frames} "
                              "pose frames.",
                              "Build it from the same aligned pose (or one face mask per pose frame).")
    if refine.tiny and not model.tiny:
        raise MarionetteError("The tiny random face model only fits the tiny test model.",
                              "Pick Animation/glintr100_torch.pth in HJB Face Refine.")
    boxes = face_boxes(refine.target_masks, size)
    if model.animation == "mimicmotion":
        boxes = [None] + boxes
    return FaceRefiner(refine.embedder.to(device), refine.reference, boxes, model.vae, model.vae_scaling_factor,
                       refine.settings, check=check)


def _controlled_unet(model: SVDAnimation, dispose: DisPoseGuidance | None, frames: int, size: tuple[int, int]):
    """(UNet callable, per-frame inputs) for sampling: the plain UNet, or DisPose's ControlNet around it."""
    if dispose is None:
        return None, None
    from ..dispose.controlled_unet import DisPoseUNet
    if model.animation != "mimicmotion":
        raise MarionetteError("DisPose's ControlNet was trained on MimicMotion, not StableAnimator.",
                              "Pick MimicMotion in SVD Animation Loader, or disconnect the control input.")
    if dispose.tiny != model.tiny:
        raise MarionetteError("The tiny random DisPose ControlNet only fits the tiny test model (and the real "
                              "DisPose.pth only the real MimicMotion).",
                              "Pick matching models in DisPose ControlNet Loader and SVD Animation Loader.")
    keypoints = dispose.correspondence
    embeddings = None if keypoints is None else keypoints.embeddings
    wanted = dispose.controlnet.point_adapter.embedding_channels
    if keypoints is not None and embeddings.shape[-1] != wanted:
        raise MarionetteError(
            f"The keypoint features are {embeddings.shape[-1]} wide but the ControlNet takes {wanted}.",
            "Use SD1.5 in Keypoint Correspondence with DisPose.pth (the tiny SD1.5 goes with the tiny ControlNet).")
    unet = DisPoseUNet(model.unet, dispose.controlnet, size, embeddings, dispose.strength)
    return unet, frame_inputs(dispose, frames, size)


def _pose_features(model: SVDAnimation, poses: torch.Tensor, device, dtype, check) -> torch.Tensor:
    pieces = []
    for start in range(0, poses.shape[0], POSE_NET_CHUNK):
        check()
        chunk = pose_images_to_input(poses[start:start + POSE_NET_CHUNK].float().cpu(), dtype).to(device)
        pieces.append(model.pose_net(chunk))
    return torch.cat(pieces)
