"""Reference-image conditioning of the SVD animation models, and decoding of video latents.

Facts (diffusers 0.42.1 `StableVideoDiffusionPipeline`; StableAnimator `InferenceAnimationPipeline` and
MimicMotion `MimicMotionPipeline` are the same code here):
- CLIP embedding (`_encode_image`, PIL input): pixels/255 -> `2x - 1` -> `_resize_with_antialiasing(x,
  (224, 224))` (Gaussian blur, then bicubic with align_corners=True: a squash to 224x224, no crop) ->
  `(x + 1) / 2` -> `CLIPImageProcessor` with only normalisation on (mean/std from
  `feature_extractor/preprocessor_config.json`) -> `image_encoder(...).image_embeds` -> `unsqueeze(1)`.
  Implemented here as `clip_pixel_values` / `clip_image_embedding`, with our own blur and resize.
  Differences elsewhere: ComfyUI's `clip_preprocess` (and kijai's MimicMotion wrapper, which uses it)
  resizes the short side and centre-crops, and transformers' `CLIPImageProcessor` with its defaults does
  the same with PIL bicubic; both cut off parts of a portrait reference and give other embeddings.
- Reference latent (`__call__` + `_encode_vae_image`): the image at the video size in [-1, 1], plus
  `noise_aug_strength * randn` (drawn even when the strength is 0), VAE-encoded with
  `latent_dist.mode()` (the mean, not a sample), NOT multiplied by the scaling factor, repeated over the
  frames. Half-precision VAEs with `force_upcast` encode in float32.
- Decoding (`decode_latents`): `latents / scaling_factor`, decoded `chunk` frames at a time with
  `num_frames=chunk` for the temporal decoder, then `(x / 2 + 0.5).clamp(0, 1)` (VaeImageProcessor).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..errors import MarionetteError

CLIP_INPUT_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # SVD feature_extractor/preprocessor_config.json
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_NOISE_AUG = 0.02


# ----------------------------------------------------------------------------------------- input
def images_to_nchw(images) -> torch.Tensor:
    """A ComfyUI IMAGE ([H, W, 3] or [N, H, W, 3], float in [0, 1]) -> float32 [N, 3, H, W]."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise MarionetteError(f"The reference must be an IMAGE [frames, H, W, 3]; got shape {tuple(images.shape)}.",
                              "Pass an RGB image as it comes from a Load Image node.")
    if not images.is_floating_point():
        raise MarionetteError(f"The reference must be float in [0, 1]; got dtype {images.dtype}.",
                              "Divide 8-bit images by 255 first.")
    return images.float().permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------- CLIP
def _gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float32) - size // 2
    weights = torch.exp(-offsets.square() / (2 * sigma * sigma))
    return weights / weights.sum()


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Depthwise 1-D convolution along H (axis=2) or W (axis=3) with reflected borders."""
    size = kernel.numel()
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    pad = (0, 0, before, after) if axis == 2 else (before, after, 0, 0)
    shape = (1, 1, size, 1) if axis == 2 else (1, 1, 1, size)
    channels = x.shape[1]
    weight = kernel.to(x.dtype).view(shape).expand(channels, 1, *shape[2:])
    return F.conv2d(F.pad(x, pad, mode="reflect"), weight, groups=channels)


def antialiased_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """SVD's resize for the CLIP input: per-axis Gaussian pre-blur with sigma = max((scale - 1) / 2, 0.001)
    (skimage's rule) over an odd window of int(max(4 sigma, 3)) taps, then bicubic, align_corners=True."""
    height, width = x.shape[-2:]
    sigmas = [max((src / dst - 1.0) / 2.0, 0.001) for src, dst in ((height, size[0]), (width, size[1]))]
    taps = [int(max(4.0 * s, 3)) for s in sigmas]
    taps = [t + 1 if t % 2 == 0 else t for t in taps]
    blurred = _blur_axis(x, _gaussian_kernel(taps[1], sigmas[1]), axis=3)
    blurred = _blur_axis(blurred, _gaussian_kernel(taps[0], sigmas[0]), axis=2)
    return F.interpolate(blurred, size=size, mode="bicubic", align_corners=True)


def clip_pixel_values(images, mean=CLIP_MEAN, std=CLIP_STD, size: int = CLIP_INPUT_SIZE) -> torch.Tensor:
    """IMAGE in [0, 1] -> the CLIP encoder input [N, 3, size, size], float32, as the SVD pipelines make it
    (the resize runs on [-1, 1] values, as in the original implementation)."""
    x = images_to_nchw(images)
    if min(x.shape[-2:]) < 2:
        raise MarionetteError(f"The reference is only {x.shape[-1]}x{x.shape[-2]} pixels.", "Use a real image.")
    x = (antialiased_resize(x * 2.0 - 1.0, (size, size)) + 1.0) / 2.0
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_image_embedding(image_encoder, images, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """The reference's CLIP `image_embeds` as UNet context tokens [N, 1, D] (D = 1024 for SVD), in the
    encoder's dtype. The classifier-free-guidance negative is `zeros_like` of this."""
    size = int(getattr(image_encoder.config, "image_size", CLIP_INPUT_SIZE))
    parameter = next(image_encoder.parameters())
    pixels = clip_pixel_values(images, mean, std, size).to(device=parameter.device, dtype=parameter.dtype)
    return image_encoder(pixel_values=pixels).image_embeds.unsqueeze(1)


# -------------------------------------------------------------------------------------------- VAE
def vae_downsampling(vae) -> int:
    """Pixels per latent cell: 8 for SVD's VAE (2 ** (levels - 1)); a VAE that is no such stack (the patch
    latent) states it in its config."""
    stated = vae.config.get("downsampling")
    return int(stated) if stated else 2 ** (len(vae.config.block_out_channels) - 1)


@contextlib.contextmanager
def _encoding_dtype(vae):
    """The official pipelines run a half-precision VAE's encoder in float32 when its config asks for it."""
    original = next(vae.parameters()).dtype
    upcast = original in (torch.float16, torch.bfloat16) and bool(vae.config.get("force_upcast", False))
    # plain nn.Module.to: diffusers' override only adds a warning about fp32-only modules (none here)
    if upcast:
        torch.nn.Module.to(vae, dtype=torch.float32)
    try:
        yield torch.float32 if upcast else original
    finally:
        if upcast:
            torch.nn.Module.to(vae, dtype=original)


@torch.no_grad()
def reference_latent(vae, images, num_frames: int, noise_aug_strength: float = DEFAULT_NOISE_AUG,
                     generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The UNet's image conditioning [N, num_frames, C, H/8, W/8]: VAE `mode()` of the noise-augmented
    reference, unscaled, repeated per frame. The reference must already be at the video size.

    The noise is `randn` of the image's shape (float32, drawn on `generator`'s device), drawn even when the
    strength is 0 so a shared generator advances as in the official pipelines. `dtype`: output
    dtype (default: the VAE's). The classifier-free-guidance negative is `zeros_like` of this."""
    if int(num_frames) < 1:
        raise MarionetteError(f"num_frames must be at least 1, got {num_frames}.", "Ask for one or more frames.")
    x = images_to_nchw(images)
    scale = vae_downsampling(vae)
    if x.shape[-2] % scale or x.shape[-1] % scale:
        raise MarionetteError(
            f"The reference is {x.shape[-1]}x{x.shape[-2]}; the VAE needs both sides to be multiples of {scale}.",
            "Resize the reference to the output video size (a multiple of 64 is safest).")
    device = next(vae.parameters()).device
    x = x.to(device) * 2.0 - 1.0
    noise_device = generator.device if generator is not None else device  # diffusers' randn_tensor rule
    noise = torch.randn(x.shape, generator=generator, device=noise_device, dtype=x.dtype).to(device)
    x = x + float(noise_aug_strength) * noise
    out_dtype = dtype or next(vae.parameters()).dtype
    with _encoding_dtype(vae) as working:
        latent = vae.encode(x.to(working)).latent_dist.mode()
    return latent.to(out_dtype).unsqueeze(1).repeat(1, int(num_frames), 1, 1, 1)


def decode_latents(vae, latents: torch.Tensor, chunk: int, scaling_factor: float | None = None) -> torch.Tensor:
    """Video latents ([F, C, h, w] or [B, F, C, h, w], scaled as the UNet sees them) -> frames
    [B*F, H, W, 3] float32 in [0, 1]. Decodes `chunk` frames per call (the temporal decoder mixes frames
    within a chunk, so the chunk size changes the result slightly). Gradients flow if enabled."""
    if latents.ndim == 5:
        latents = latents.flatten(0, 1)
    if latents.ndim != 4:
        raise MarionetteError(f"Latents must be [frames, channels, h, w]; got {tuple(latents.shape)}.",
                              "Pass the sampler's output latents.")
    chunk = int(chunk)
    if chunk < 1:
        raise MarionetteError(f"The decode chunk size must be at least 1, got {chunk}.", "Use 1 to 16 (4 or 8 typical).")
    factor = float(scaling_factor if scaling_factor is not None else vae.config.scaling_factor)
    parameter = next(vae.parameters())
    latents = (latents / factor).to(device=parameter.device, dtype=parameter.dtype)
    pieces = []
    for start in range(0, latents.shape[0], chunk):
        part = latents[start:start + chunk]
        pieces.append(vae.decode(part, num_frames=part.shape[0]).sample.float())
    frames = torch.cat(pieces)
    return (frames / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

