"""Reference and guidance inputs of Champ / Moore-AnimateAnyone, and decoding, as the official pipelines do it.

Facts (Champ `pipeline_aggregation.py` + `inference.py`, Moore `pipeline_pose2vid_long.py`; same code):
- CLIP image token: the reference PIL image squashed to 224x224 (`ref_image.resize((224, 224))`, PIL's
  default bicubic, no crop), then `CLIPImageProcessor()` with its defaults, which at 224x224 only divides by
  255 and normalises with OpenAI's mean/std; `image_encoder(...).image_embeds` (projected, 768-d, not
  normalised) -> [1, 1, 768]. The unconditional branch gets zeros.
- Reference latent: `VaeImageProcessor.preprocess(ref_image, height, width)`: the PIL image squashed to
  the generation size with Lanczos (its default `resample`), /255, 2x - 1; `vae.encode(...).latent_dist.mean
  * 0.18215` (the mean, clean, no noise).
- Guidance / pose frames: RGB in [0, 1] (no normalisation) at the generation size (Champ: PIL resize,
  bicubic, then /255; Moore: `VaeImageProcessor(do_normalize=False)`).
- Decoding: `latents / 0.18215`, VAE-decoded (one frame at a time officially; the SD VAE is per image, so
  chunks give the same frames), `(x / 2 + 0.5).clamp(0, 1)`.
Our images come in as ComfyUI IMAGE tensors (float [0, 1]); the squashes go through 8-bit PIL images as
the official scripts' do, so an image loaded from a file gets the official pixels.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import MarionetteError

VAE_SCALING = 0.18215  # hard-coded in both official pipelines (sd-vae-ft-mse's config agrees)
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor() defaults (OpenAI)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_pil(image: torch.Tensor) -> Image.Image:
    """IMAGE [H, W, 3] float in [0, 1] -> 8-bit PIL (what the official scripts open from disk)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def _from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def one_reference(reference: torch.Tensor) -> torch.Tensor:
    """The reference IMAGE as [H, W, 3], or a clear error for anything but one RGB frame."""
    if reference.ndim == 4 and reference.shape[0] == 1:
        reference = reference[0]
    if reference.ndim != 3 or reference.shape[-1] != 3:
        raise MarionetteError(f"The reference image must be one RGB frame; got shape {tuple(reference.shape)}.",
                              "Pick one frame with ImageFromBatch (or connect LoadReference).")
    return reference


def clip_pixels(reference: torch.Tensor, size: int = CLIP_SIZE) -> torch.Tensor:
    """[1, 3, 224, 224] CLIP input of a reference IMAGE: squashed with PIL bicubic, OpenAI-normalised
    (`size`: the encoder's input size; 224 for the released ViT-L/14, smaller for the tiny test encoder)."""
    squashed = _from_pil(_to_pil(one_reference(reference)).resize((size, size), Image.BICUBIC))
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((squashed - mean) / std).unsqueeze(0)


def reference_pixels(reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, 3, H, W] VAE input in [-1, 1]: the reference squashed to `size` (H, W) with PIL Lanczos."""
    height, width = size
    image = one_reference(reference)
    if tuple(image.shape[:2]) == (height, width):
        pixels = image.detach().float().cpu().permute(2, 0, 1)  # PIL returns a same-size image unchanged
    else:
        pixels = _from_pil(_to_pil(image).resize((width, height), Image.LANCZOS))
    return (pixels * 2.0 - 1.0).unsqueeze(0)


def clip_token(image_encoder, reference: torch.Tensor, device, dtype) -> torch.Tensor:
    """The conditional context [1, 1, 768]: CLIP `image_embeds` of the squashed reference."""
    size = int(getattr(getattr(image_encoder, "config", None), "image_size", CLIP_SIZE))
    embeds = image_encoder(clip_pixels(reference, size).to(device, dtype)).image_embeds
    return embeds.unsqueeze(1)


def reference_latent(vae, reference: torch.Tensor, size: tuple[int, int], device, dtype) -> torch.Tensor:
    """[1, 4, H/8, W/8]: `latent_dist.mean * 0.18215` of the reference squashed to the generation size."""
    return vae.encode(reference_pixels(reference, size).to(device, dtype)).latent_dist.mean * VAE_SCALING


def guidance_pixels(frames: torch.Tensor, dtype, device) -> torch.Tensor:
    """IMAGE frames [T, H, W, 3] -> the encoders' input [T, 3, H, W] in [0, 1] (not normalised)."""
    return frames.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2).clamp(0, 1).to(dtype)


def decode_latents(vae, latents: torch.Tensor, chunk: int, device, dtype,
                   check: Callable[[], None] | None = None,
                   out_device: torch.device | str = "cpu") -> torch.Tensor:
    """UNet-space latents [F, 4, h, w] -> frames [F, H, W, 3] float32 in [0, 1] on `out_device`,
    `chunk` frames per VAE call; `check()` before each call (raise there to cancel)."""
    if chunk < 1:
        raise MarionetteError(f"decode_chunk must be at least 1, got {chunk}.", "Use 4 (lower saves memory).")
    pieces = []
    for start in range(0, latents.shape[0], chunk):
        if check is not None:
            check()
        part = latents[start:start + chunk].to(device, dtype) / VAE_SCALING
        image = vae.decode(part).sample
        pieces.append((image.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).to(out_device))
    return torch.cat(pieces)
