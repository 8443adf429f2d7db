"""The SVD animation sampler: deterministic EDM Euler with per-frame linear CFG over overlapping windows.

It reproduces the denoising loop of StableAnimator's `InferenceAnimationPipeline` and MimicMotion's
`MimicMotionPipeline` (the same loop) for any UNet callable with `PoseSVDUNet.forward`'s signature:

    unet(sample [1, T, 8, h, w], timestep (0-dim, 0.25 ln sigma), encoder_hidden_states=[1, tokens, C],
         added_time_ids=[1, 3], pose_features=[T, C0, h, w] or None, return_dict=False)[0] -> v [1, T, 4, h, w]

Inputs the caller prepares (as the official pipelines do):
- `cond` / `uncond`: the UNet contexts (StableAnimator: `unet_context` / `null_unet_context`, 5 tokens;
  MimicMotion: the CLIP token / zeros). `uncond` may be None when CFG is 1 everywhere.
- `ref_latent` [4, h, w] (`latent_channels` with another VAE):
  `vae.encode(image + noise_aug_strength * randn).latent_dist.mode()`, NOT multiplied by the VAE scaling
  factor. The unconditional pass gets zeros in its place, and no pose.
- `pose_features` [F, C0, h, w]: PoseNet output per frame, or None.
The result is in the UNet's latent space: divide by the VAE scaling factor (0.18215) before decoding.

Choices (documented differences from the official code, none of which changes the maths):
- CFG runs as two batch-1 UNet calls per window (unconditional, then conditional), as the official code
  does to save memory; the per-frame guidance is applied inside each window before fusing, which equals
  fusing first because fusion is a per-frame weighted mean. CFG 1 everywhere makes one conditional call.
- When the video has fewer frames than a tile, the tile shrinks to the video (one window of all frames,
  like StableAnimator's HJB mode) instead of failing.
- The latents are integrated in float32 whatever the UNet dtype (diffusers upcasts inside `step` only).
- Start noise is drawn for one tile from the caller's `torch.Generator` in the model dtype and repeated
  periodically over the frames (the official `prepare_latents` + `repeat`). The official scripts draw the
  reference image's noise augmentation from the same generator first (`conditioning.reference_latent`),
  so one generator seeded with `seed` on the official device, used in that order, reproduces their noise.
- All F frames are returned, MimicMotion's anchor frame 0 included: the official pipeline decodes it with
  the others (the temporal decoder mixes frames within a chunk) and drops its image afterwards.
"""
from dataclasses import dataclass, fields
from typing import Callable

import torch

from ..errors import MarionetteError
from .schedule import (SIGMA_MAX, SIGMA_MIN, edm_scalings, euler_step, fusion_weights, guidance_scales,
                       init_noise_scale, karras_sigmas, tile_weights, tile_windows)

LATENT_CHANNELS = 4  # SVD's VAE; a model trained on another VAE passes its own `latent_channels`


@dataclass(frozen=True)
class SamplerSettings:
    """Sampling settings; defaults are StableAnimator's `command_basic_infer.sh` (with the pipeline's
    hard-coded fps 7 and motion bucket 127). `preset("mimicmotion")` gives MimicMotion 1.1's test.yaml.

    `drop_first_frame`: frame 0 is in every window as an anchor. MimicMotion prepends the reference
    image's own pose as frame 0 and throws that decoded frame away (set True); StableAnimator's frame 0 is
    the first driving pose and is kept (False)."""
    steps: int = 25
    cfg_min: float = 3.0
    cfg_max: float = 3.0
    fps: int = 7
    motion_bucket_id: int = 127
    noise_aug_strength: float = 0.02
    tile_size: int = 16
    tile_overlap: int = 4
    seed: int = 23123134
    drop_first_frame: bool = False

    def __post_init__(self):
        _check_int(self, "steps", 1, "Use 25 steps (the official default); fewer steps blur details.")
        _check_int(self, "tile_size", 2, "Use 16 (StableAnimator, MimicMotion 1.0) or 72 (MimicMotion 1.1).")
        # Windows hold frame 0 plus tile_size - 1 frames, so with no overlap a frame between windows would
        # be left out (the official code would divide by a zero weight there).
        _check_int(self, "tile_overlap", 1, "Use 4 (StableAnimator) or 6 (MimicMotion 1.1); at least 1.")
        _check_int(self, "fps", 1, "Use 7, the value both official pipelines condition on.")
        _check_int(self, "seed", 0, "Use a non-negative integer seed.")
        if self.tile_overlap >= self.tile_size:
            raise MarionetteError(
                f"Tile overlap {self.tile_overlap} must be smaller than the tile size {self.tile_size}.",
                "Lower the overlap (4 for a 16-frame tile) or raise the tile size.")
        for name in ("cfg_min", "cfg_max"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 1.0:
                raise MarionetteError(
                    f"{name} is {value}: guidance below 1 pushes away from the reference and the pose.",
                    "Set the CFG scales to at least 1 (1 = no guidance, one UNet call per window; the "
                    "official default is 3.0).")
        if not 0.0 <= self.noise_aug_strength <= 1.0:
            raise MarionetteError(f"noise_aug_strength {self.noise_aug_strength} is outside [0, 1].",
                                  "Use 0.02 (StableAnimator) or 0.0 (MimicMotion).")
        if not 0 <= self.motion_bucket_id <= 1023:
            raise MarionetteError(f"motion_bucket_id {self.motion_bucket_id} is outside [0, 1023].",
                                  "Use 127, the official value.")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SamplerSettings":
        """'stableanimator' (the defaults) or 'mimicmotion' (1.1: tile 72, overlap 6, CFG 2, no noise
        augmentation, seed 42, reference pose prepended and dropped), with any field overridden."""
        presets = {"stableanimator": {},
                   "mimicmotion": dict(cfg_min=2.0, cfg_max=2.0, noise_aug_strength=0.0, tile_size=72,
                                       tile_overlap=6, seed=42, drop_first_frame=True)}
        if name not in presets:
            raise MarionetteError(f"Unknown sampler preset {name!r}.", f"Use one of {sorted(presets)}.")
        return cls(**{**presets[name], **overrides})

    def added_time_ids(self, dtype=torch.float32, device=None) -> torch.Tensor:
        """SVD's micro-conditioning [1, 3]: fps - 1 (SVD was trained on fps - 1), motion bucket, noise aug."""
        values = [[self.fps - 1, self.motion_bucket_id, self.noise_aug_strength]]
        return torch.tensor(values, dtype=dtype, device=device)

    @property
    def uses_cfg(self) -> bool:
        """Whether an unconditional pass is needed (as official: the largest scale is above 1)."""
        return max(self.cfg_min, self.cfg_max) > 1.0


def _check_int(settings: SamplerSettings, name: str, low: int, fix: str) -> None:
    value = getattr(settings, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise MarionetteError(f"{name} must be an integer >= {low}, got {value!r}.", fix)


def settings_fields() -> list[str]:
    """Names of the settings, in order (for node inputs)."""
    return [f.name for f in fields(SamplerSettings)]


@dataclass
class _Plan:
    """Everything fixed for a run: schedule, windows and their normalised weights, conditioning."""
    sigmas: torch.Tensor
    windows: list[torch.Tensor]
    weights: list[torch.Tensor]
    guidance: torch.Tensor  # [F, 1, 1, 1]
    time_ids: torch.Tensor
    model_ref: torch.Tensor  # [1, F, 4, h, w] in the model dtype
    zero_ref: torch.Tensor | None


def start_noise(num_frames: int, tile_size: int, latent_hw: tuple[int, int], generator: torch.Generator,
                dtype: torch.dtype = torch.float32, channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """Unit Gaussian noise [F, channels, h, w] (float32, on the generator's device): one tile drawn from
    `generator` in `dtype` (the official pipelines draw in the UNet's dtype), repeated periodically over
    the frames as they do."""
    tile = torch.randn((tile_size, channels, *latent_hw), generator=generator, device=generator.device,
                       dtype=dtype).float()
    repeats = num_frames // tile_size + 1
    return tile.repeat(repeats, 1, 1, 1)[:num_frames]


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The official scripts' generator: `torch.Generator(device).manual_seed(seed)`. Its device decides the
    noise: the same seed gives other noise on a CUDA generator than on a CPU one."""
    return torch.Generator(device=device).manual_seed(int(seed))


def effective_tile(num_frames: int, settings: SamplerSettings) -> tuple[int, int]:
    """(tile size, overlap) actually used: the tile shrinks to the video when the video is shorter."""
    tile = min(settings.tile_size, num_frames)
    return tile, min(settings.tile_overlap, tile - 1)


def sample(unet: Callable, cond: torch.Tensor, uncond: torch.Tensor | None, ref_latent: torch.Tensor,
           pose_features: torch.Tensor | None, settings: SamplerSettings, num_frames: int | None = None,
           on_step: Callable[[int, int, torch.Tensor], None] | None = None,
           refine: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None,
           frame_inputs: dict[str, torch.Tensor] | None = None,
           generator: torch.Generator | None = None, latent_channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """Denoise a video and return its latents [F, 4, h, w] (float32, on `ref_latent`'s device, scaled as
    the UNet sees them; `latent_channels` instead of 4 for a model trained on another VAE), all F frames
    including MimicMotion's anchor (drop it after decoding).

    F is `pose_features.shape[0]`, or `num_frames` when there are no pose features. The UNet runs in the
    dtype of `cond`. `on_step(done, total, x0_preview)` is called after every step with the current
    denoised estimate of the returned frames; an exception raised there stops sampling and propagates.
    `refine(x0, step, steps)` may replace the guided denoised estimate of all F frames before the Euler
    step (StableAnimator's HJB face optimisation, `face_refine.FaceRefiner`). `frame_inputs` are extra
    per-frame UNet keyword inputs [F, ...] (e.g. DisPose's motion fields), cut to each window like the pose
    features and given to both CFG passes. `generator` draws the start noise (default: a CPU generator
    seeded with `settings.seed`); pass the one that drew the reference's noise for the official order.
    The previews (`on_step`) leave the anchor out with `settings.drop_first_frame`.
    """
    frames = _frame_count(pose_features, num_frames)
    for name, value in (frame_inputs or {}).items():
        if value.shape[0] != frames:
            raise MarionetteError(f"The per-frame input '{name}' has {value.shape[0]} frames for {frames} sampled "
                                  "frames.", "Give one entry per sampled frame (reference slot included).")
    if settings.drop_first_frame and frames < 2:
        raise MarionetteError("drop_first_frame needs the reference pose plus at least one driving frame.",
                              "Pass at least two frames of pose features.")
    ref_latent = _check_inputs(cond, uncond, ref_latent, pose_features, settings, latent_channels)
    device, dtype = ref_latent.device, cond.dtype
    with torch.no_grad():
        plan = _plan(frames, ref_latent, settings, device, dtype)
        generator = generator if generator is not None else seeded_generator(settings.seed)
        noise = start_noise(frames, effective_tile(frames, settings)[0], tuple(ref_latent.shape[-2:]), generator,
                            dtype, channels=latent_channels)
        x = noise.to(device) * init_noise_scale(plan.sigmas[0])
        keep = 1 if settings.drop_first_frame else 0
        total = settings.steps
        for step in range(total):
            sigma, sigma_next = plan.sigmas[step], plan.sigmas[step + 1]
            x0 = _denoise(unet, x, sigma, plan, cond, uncond, pose_features, settings.uses_cfg, frame_inputs or {})
            if refine is not None:
                x0 = refine(x0, step, total)
            x = euler_step(x, x0, sigma, sigma_next)
            if on_step is not None:
                on_step(step + 1, total, x0[keep:])
    return x


def _frame_count(pose_features, num_frames) -> int:
    if pose_features is not None:
        if pose_features.ndim != 4:
            raise MarionetteError(f"Pose features must be [frames, channels, h, w], got "
                                  f"{tuple(pose_features.shape)}.", "Run PoseNet on the pose frames first.")
        if num_frames is not None and num_frames != pose_features.shape[0]:
            raise MarionetteError(f"num_frames {num_frames} differs from the {pose_features.shape[0]} pose "
                                  "feature frames.", "Leave num_frames out when passing pose features.")
        return int(pose_features.shape[0])
    if not isinstance(num_frames, int) or num_frames < 1:
        raise MarionetteError("Without pose features the number of frames must be given.",
                              "Pass num_frames (a positive integer) or the PoseNet features.")
    return num_frames


def _check_inputs(cond, uncond, ref_latent, pose_features, settings, channels: int) -> torch.Tensor:
    if ref_latent.ndim == 4 and ref_latent.shape[0] == 1:
        ref_latent = ref_latent[0]
    if ref_latent.ndim != 3 or ref_latent.shape[0] != channels:
        raise MarionetteError(f"The reference latent must be [{channels}, h, w], got {tuple(ref_latent.shape)}.",
                              "Encode the reference image with the SVD VAE (latent_dist.mode()).")
    if cond.ndim != 3 or cond.shape[0] != 1:
        raise MarionetteError(f"The conditional context must be [1, tokens, dim], got {tuple(cond.shape)}.",
                              "Build it with unet_context (StableAnimator) or the CLIP image embedding.")
    if settings.uses_cfg:
        if uncond is None:
            raise MarionetteError("CFG above 1 needs an unconditional context, got None.",
                                  "Pass null_unet_context(...) (zeros), or set both CFG scales to 1.")
        if uncond.shape != cond.shape:
            raise MarionetteError(f"Unconditional context {tuple(uncond.shape)} differs from the "
                                  f"conditional one {tuple(cond.shape)}.", "Build both from the same inputs.")
    if pose_features is not None and tuple(pose_features.shape[-2:]) != tuple(ref_latent.shape[-2:]):
        raise MarionetteError(f"Pose features are {tuple(pose_features.shape[-2:])} but the latent is "
                              f"{tuple(ref_latent.shape[-2:])}.", "Draw the poses at 8x the latent size.")
    return ref_latent


def _plan(frames: int, ref_latent: torch.Tensor, settings: SamplerSettings, device, dtype) -> _Plan:
    tile, overlap = effective_tile(frames, settings)
    windows = tile_windows(frames, tile, overlap)
    weights = fusion_weights(frames, windows, tile_weights(tile))
    model_ref = ref_latent.to(device, dtype).unsqueeze(0).expand(frames, -1, -1, -1).unsqueeze(0)
    return _Plan(
        sigmas=karras_sigmas(settings.steps, SIGMA_MIN, SIGMA_MAX),
        windows=[torch.tensor(w, device=device) for w in windows],
        weights=[w.to(device).view(-1, 1, 1, 1) for w in weights],
        guidance=guidance_scales(frames, settings.cfg_min, settings.cfg_max).to(device).view(-1, 1, 1, 1),
        time_ids=settings.added_time_ids(dtype, device),
        model_ref=model_ref,
        zero_ref=torch.zeros_like(model_ref) if settings.uses_cfg else None)


def _denoise(unet, x, sigma, plan: _Plan, cond, uncond, pose_features, uses_cfg: bool,
             frame_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The denoised estimate x0 [F, 4, h, w] at noise level sigma: guided v fused over the windows."""
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma)
    scaled = (x * c_in).to(plan.model_ref.dtype).unsqueeze(0)
    timestep = c_noise.to(x.device)
    fused = torch.zeros_like(x)
    for window, weight in zip(plan.windows, plan.weights):
        pose = None if pose_features is None else pose_features.index_select(0, window)
        extra = {name: value.index_select(0, window.to(value.device)) for name, value in frame_inputs.items()}
        noisy = scaled.index_select(1, window)
        v = _call(unet, noisy, plan.model_ref.index_select(1, window), timestep, cond, plan.time_ids, pose, extra)
        if uses_cfg:
            v_uncond = _call(unet, noisy, plan.zero_ref.index_select(1, window), timestep, uncond,
                             plan.time_ids, None, extra)
            v = v_uncond + plan.guidance.index_select(0, window) * (v - v_uncond)
        fused.index_add_(0, window, v * weight)
    return c_skip * x + c_out * fused


def _call(unet, noisy, ref, timestep, context, time_ids, pose, extra) -> torch.Tensor:
    """One UNet pass on one window (batch 1); returns v [T, 4, h, w] in float32."""
    sample = torch.cat([noisy, ref], dim=2)
    out = unet(sample, timestep, encoder_hidden_states=context, added_time_ids=time_ids,
               pose_features=pose, return_dict=False, **extra)[0]
    return out[0].float()
