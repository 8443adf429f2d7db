"""The SD1.5 ReferenceNet animation pipeline: Champ (SMPL guidance maps) or Moore-AnimateAnyone (skeletons),
as the official long-video pipelines run them (Champ `pipeline_aggregation.py`, Moore
`pipeline_pose2vid_long.py`).

Order of work:
1. CLIP token of the reference (224 squash) for the conditional branch; zeros for the unconditional one.
2. The reference latent (`latent_dist.mean` * 0.18215, the reference squashed to the generation size) and
   the reference UNet run once at t = 0 with the CLIP token: its 16 attention banks (conditional branch
   only, `sd15.reference`).
3. Guidance features: every connected map through its encoder (Moore: the PoseGuider; Champ: one
   GuidanceEncoder per map type, any subset), summed; encoded `GUIDANCE_CHUNK` frames at a time and kept
   on `store_device` (the CPU by default), so device memory does not grow with the clip length. A window's
   features go to the device for its two UNet passes.
4. The start latent from the seeded generator (`sd15.sampler.start_noise`), DDIM over context windows
   with CFG (`sd15.sampler.sample`).
5. Chunked VAE decode. The latents handed back are in the VAE's raw space (ComfyUI's LATENT convention).
The generation size is the guidance maps' size; the frames come out at that size (Champ's script then
resizes them to the reference's size; connect ImageScale for that).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import MarionetteError
from ..sd15.reference import record_reference, reference_attention
from ..sd15.sampler import SD15SamplerSettings, sample, seeded_generator, start_noise
from .sd15_conditioning import (VAE_SCALING, clip_token, decode_latents, guidance_pixels, one_reference,
                                reference_latent)

FAMILIES = ("champ", "animate_anyone")
CHAMP_MAPS = ("depth", "normal", "semantic_map", "dwpose")  # guidance_encoder_<type>.pth, the training order
POSE_MAP = "pose"                                           # Moore's single PoseGuider
GUIDANCE_CHUNK = 16  # frames per encoder call (Champ HEAD's optional guidance_process_size does the same)
SIZE_MULTIPLE = 8    # latent cells; the guidance encoders' stride


class SD15Animation(nn.Module):
    """Everything one Champ or Moore-AnimateAnyone model needs, in one module so that ComfyUI can move and
    offload it as a whole. `guidance_encoders`: {"pose": PoseGuider} (Moore) or a subset of CHAMP_MAPS
    -> GuidanceEncoder (Champ)."""

    def __init__(self, family: str, denoising_unet: nn.Module, reference_unet: nn.Module,
                 guidance_encoders: Mapping[str, nn.Module], vae: nn.Module, image_encoder: nn.Module,
                 dtype: torch.dtype, tiny: bool = False, files: Mapping[str, str] | None = None):
        super().__init__()
        if family not in FAMILIES:
            raise MarionetteError(f"Unknown model family {family!r}.", f"Use one of {', '.join(FAMILIES)}.")
        allowed = (POSE_MAP,) if family == "animate_anyone" else CHAMP_MAPS
        unknown = sorted(set(guidance_encoders) - set(allowed))
        if unknown or not guidance_encoders:
            raise MarionetteError(f"{family} takes guidance encoders {', '.join(allowed)}; got "
                                  f"{', '.join(sorted(guidance_encoders)) or 'none'}.",
                                  "Load the family's own guidance files.")
        self.family, self.tiny, self.dtype_ = family, tiny, dtype
        self.denoising_unet, self.reference_unet = denoising_unet, reference_unet
        self.guidance_encoders = nn.ModuleDict(dict(guidance_encoders))
        self.vae, self.image_encoder = vae, image_encoder
        self.files = dict(files or {})

    def get_dtype(self) -> torch.dtype:
        return self.dtype_

    @classmethod
    def from_parts(cls, family: str, loaded, vae: nn.Module, image_encoder: nn.Module, tiny: bool = False,
                   files: Mapping[str, str] | None = None) -> "SD15Animation":
        """From `champ.loading.ChampModel` or `animate_anyone.loading.AnimateAnyoneModel` plus the VAE and the
        CLIP image encoder."""
        if family == "champ":
            encoders = dict(loaded.guidance.encoders)
        else:
            encoders = {POSE_MAP: loaded.pose_guider}
        return cls(family, loaded.backbone.denoising_unet, loaded.backbone.reference_unet, encoders, vae,
                   image_encoder, loaded.dtype, tiny, {**loaded.files, **(files or {})})


@dataclass
class AnimationResult:
    frames: torch.Tensor   # [F, H, W, 3] float in [0, 1]
    latents: torch.Tensor  # [F, 4, H/8, W/8] in the VAE's raw latent space


def check_guidance(model: SD15Animation, guidance: Mapping[str, torch.Tensor],
                   frames: int | None = None) -> tuple[int, tuple[int, int]]:
    """(frame count, (H, W)) of the guidance maps, or an error naming what does not fit."""
    if not guidance:
        wanted = "pose_images" if model.family == "animate_anyone" else "at least one of depth, normal, " \
                                                                         "semantic, skeleton"
        raise MarionetteError("No guidance frames are connected.", f"Connect {wanted}.")
    missing = sorted(set(guidance) - set(model.guidance_encoders))
    if missing:
        raise MarionetteError(f"Guidance '{', '.join(missing)}' is connected but the model has no encoder for it "
                              f"(loaded: {', '.join(sorted(model.guidance_encoders))}).",
                              f"Put guidance_encoder_{missing[0]}.pth next to denoising_unet.pth and load again, or "
                              "disconnect that input.")
    shapes = {}
    for name, images in guidance.items():
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
            raise MarionetteError(f"The {name} guidance must be an IMAGE batch [frames, H, W, 3]; got "
                                  f"{tuple(images.shape)}.", "Connect the frames RenderGuidance or PoseAlign draws.")
        shapes[name] = (int(images.shape[0]), int(images.shape[1]), int(images.shape[2]))
    if len({s[1:] for s in shapes.values()}) > 1 or len({s[0] for s in shapes.values()}) > 1:
        listed = ", ".join(f"{n} {s[0]} frames of {s[2]}x{s[1]}" for n, s in sorted(shapes.items()))
        raise MarionetteError(f"The guidance maps differ in size or length: {listed}.",
                              "Render every map from the same body sequence at the same size (one RenderGuidance).")
    count, height, width = next(iter(shapes.values()))
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise MarionetteError(f"The guidance maps are {width}x{height}; both sides must be multiples of "
                              f"{SIZE_MULTIPLE}.", "Render them at e.g. 512x512 or 512x768 (LoadReference sizes).")
    if frames is not None:
        if frames > count:
            raise MarionetteError(f"{frames} frames were asked for but the guidance has only {count}.",
                                  f"Set frames to at most {count} (0 = all guidance frames), or give longer guidance.")
        count = frames or count
    return count, (height, width)


def encode_guidance(model: SD15Animation, guidance: Mapping[str, torch.Tensor], frames: int, device,
                    store_device, check: Callable[[], None]) -> torch.Tensor:
    """Summed guidance features [F, 320, H/8, W/8] (model dtype, on `store_device`), chunk by chunk."""
    dtype, store = model.get_dtype(), None
    for start in range(0, frames, GUIDANCE_CHUNK):
        check()
        stop = min(start + GUIDANCE_CHUNK, frames)
        total = None
        for name in sorted(guidance):
            pixels = guidance_pixels(guidance[name][start:stop], dtype, device)
            features = model.guidance_encoders[name](pixels)
            total = features if total is None else total + features
        if store is None:
            store = torch.empty((frames, *total.shape[1:]), dtype=dtype, device=store_device)
        store[start:stop] = total.to(store_device)
    return store


class WindowDenoiser:
    """The sampler's denoiser: one context window through the UNet3D, with reference attention and the CLIP
    token in the conditional branch, zeros and no reference in the unconditional one, guidance in both."""

    def __init__(self, unet, banks, cond, features: torch.Tensor, device):
        self.unet, self.banks, self.cond, self.uncond = unet, banks, cond, torch.zeros_like(cond)
        self.features, self.device = features, device
        self._window, self._window_features = None, None

    def window_features(self, frames: torch.Tensor) -> torch.Tensor:
        key = tuple(frames.tolist())
        if key != self._window:  # both branches of a window share one transfer
            chosen = self.features.index_select(0, frames.to(self.features.device))
            self._window, self._window_features = key, chosen.to(self.device).transpose(0, 1).unsqueeze(0)
        return self._window_features

    def __call__(self, x: torch.Tensor, timestep: int, frames: torch.Tensor, conditional: bool) -> torch.Tensor:
        sample_in = x.transpose(0, 1).unsqueeze(0)  # [1, 4, T, h, w]
        t = torch.tensor(timestep, device=x.device, dtype=torch.long)
        features = self.window_features(frames)
        if conditional:
            with reference_attention(self.unet, self.banks):
                out = self.unet(sample_in, t, self.cond, features)
        else:
            out = self.unet(sample_in, t, self.uncond, features)
        return out[0].transpose(0, 1)


def animate_sd15(model: SD15Animation, reference: torch.Tensor, guidance: Mapping[str, torch.Tensor],
                 settings: SD15SamplerSettings, *, device: torch.device, frames: int | None = None,
                 noise_device: torch.device | str | None = None, store_device: torch.device | str = "cpu",
                 decode_chunk: int = 4, on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                 on_window: Callable[[int, int], None] | None = None,
                 check: Callable[[], None] | None = None) -> AnimationResult:
    """Animate `reference` (IMAGE [1, H', W', 3], any size: squashed to the guidance size) along `guidance`
    ({map name: IMAGE [F, H, W, 3]}: "pose" for Moore; "depth", "normal", "semantic_map", "dwpose" for
    Champ, any subset). The model's modules must already be on `device`.

    `frames`: how many guidance frames to animate (None or 0: all). `noise_device`: the generator's device
    (default `device`; Champ's script: the GPU's, Moore's: the CPU's). `on_step(done, steps, x0)`,
    `on_window(done, total)` and `check()` as in `sd15.sampler.sample`; `check` also runs between guidance
    and decode chunks."""
    check = check or (lambda: None)
    count, size = check_guidance(model, guidance, frames)
    guidance = {name: images[:count] for name, images in guidance.items()}
    reference = one_reference(reference).float().cpu()
    dtype = model.get_dtype()
    with torch.no_grad():
        cond = clip_token(model.image_encoder, reference, device, dtype)
        ref_latent = reference_latent(model.vae, reference, size, device, dtype)
        banks = record_reference(model.reference_unet, ref_latent, cond, 0)
        features = encode_guidance(model, guidance, count, device, store_device, check)
        generator = seeded_generator(settings.seed, noise_device or device)
        noise = start_noise(count, (size[0] // 8, size[1] // 8), generator, dtype).to(device)
        denoiser = WindowDenoiser(model.denoising_unet, banks, cond, features, device)
        latents = sample(denoiser, noise, settings, dtype=dtype, on_step=on_step, on_window=on_window, check=check)
        images = decode_latents(model.vae, latents, decode_chunk, device, dtype, check)
    return AnimationResult(images, (latents / VAE_SCALING).cpu())
