"""The SD1.5 ReferenceNet family's sampler (Champ, Moore-AnimateAnyone): DDIM over context windows with CFG.

It reproduces the denoising loop of Champ's `MultiGuidance2LongVideoPipeline` and Moore's
`Pose2VideoPipeline` (`pipeline_pose2vid_long.py`), the same loop, for any denoiser with this contract:

    denoiser(x [T, 4, h, w], timestep: int, frames: LongTensor [T], conditional: bool) -> v [T, 4, h, w]

`frames` are the window's frame indices in the clip (the caller cuts its per-frame guidance with them);
`conditional` selects the branch: True = reference attention + CLIP token, False = neither (the official
unconditional branch). Guidance features go to both branches. The reference UNet is the caller's business
(it runs once, before sampling).

Per step (official order): every window's v is summed per frame for each branch, the sums are divided by
the number of windows holding the frame (a uniform average), then CFG combines the averaged branches,
then one DDIM step (`ddim.py`) moves the whole clip. Windows: `context.py`.

Noise and seed (documented so that a seed gives the official noise): the official pipelines draw the whole
start latent in one call, `randn_tensor((1, 4, F, h/8, w/8), generator, dtype=model dtype)`, channels before
frames, from the generator's device; it is the first draw (the CLIP and VAE encodings draw nothing, DDIM
with eta 0 draws nothing after). Champ's `inference.py` uses `torch.Generator(device="cuda")` seeded with 42;
Moore's `pose2vid.py` uses `torch.manual_seed(42)`, the CPU generator. `start_noise` draws the same tensor.

Choices (documented differences from the official code, none changes the maths):
- CFG runs as two batch-1 passes per window (unconditional, then conditional) instead of one batch-2 pass:
  half the activation memory; the conditional-only reference attention needs no per-row masking.
- With CFG <= 1 (one conditional pass) the windows are averaged too; the official code divides by the
  window count only inside its CFG branch, so with several windows it would sum them.
- Sums, averages and the DDIM step run in float32 (or float64 if the noise is drawn so) whatever the UNet
  dtype; the official run keeps them in float16.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ..errors import MarionetteError
from .context import OFFICIAL_CONTEXT, OFFICIAL_OVERLAP, check_context, context_windows
from .ddim import BETA_SCHEDULES, OFFICIAL_BETA_SCHEDULE, ddim_schedule

LATENT_CHANNELS = 4


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, timestep: int, frames: torch.Tensor, conditional: bool) -> torch.Tensor:
        ...


@dataclass(frozen=True)
class SD15SamplerSettings:
    """Sampling settings; the defaults are Champ's `inference.yaml` (20 steps, CFG 3.5, seed 42);
    `preset("animate_anyone")` gives Moore's `pose2vid.py` (30 steps)."""
    steps: int = 20
    cfg: float = 3.5
    beta_schedule: str = OFFICIAL_BETA_SCHEDULE
    context_frames: int = OFFICIAL_CONTEXT
    context_overlap: int = OFFICIAL_OVERLAP
    closed_loop: bool = True
    seed: int = 42

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise MarionetteError(f"steps must be an integer from 1 to 1000, got {self.steps!r}.",
                                  "Use 20 (Champ) or 30 (Moore-AnimateAnyone).")
        if not isinstance(self.cfg, (int, float)) or isinstance(self.cfg, bool) or not 0.0 <= self.cfg < 100.0:
            raise MarionetteError(f"cfg is {self.cfg!r}; it must be a number from 0 (values up to 1 mean no "
                                  "guidance) to below 100.", "Use 3.5, the official value of both models.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise MarionetteError(f"Unknown beta schedule {self.beta_schedule!r}.",
                                  "Use 'linear' (official inference) or 'scaled_linear' (training schedule).")
        check_context(self.context_frames, self.context_overlap)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MarionetteError(f"seed must be a non-negative integer, got {self.seed!r}.", "Use e.g. 42.")

    @classmethod
    def preset(cls, family: str, **overrides) -> "SD15SamplerSettings":
        """'champ' (20 steps) or 'animate_anyone' (Moore's CLI: 30 steps), with any field overridden."""
        presets = {"champ": {}, "animate_anyone": {"steps": 30}}
        if family not in presets:
            raise MarionetteError(f"Unknown model family {family!r}.", f"Use one of {sorted(presets)}.")
        return cls(**{**presets[family], **overrides})

    @property
    def uses_cfg(self) -> bool:
        """Whether an unconditional pass runs (as official: guidance above 1)."""
        return self.cfg > 1.0


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """`torch.Generator(device).manual_seed(seed)`: Champ's generator on the sampling device, or the CPU
    generator that Moore's `torch.manual_seed(seed)` returns. Its device decides the noise."""
    return torch.Generator(device=device).manual_seed(int(seed))


def start_noise(num_frames: int, latent_hw: tuple[int, int], generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The official start latent as [F, 4, h, w] float32 on the generator's device: one draw of
    (1, 4, F, h, w) in `dtype` (the official pipelines draw in the model dtype), frames moved first."""
    noise = torch.randn((1, LATENT_CHANNELS, num_frames, *latent_hw), generator=generator,
                        device=generator.device, dtype=dtype)
    return noise[0].permute(1, 0, 2, 3).float()


def window_plan(num_frames: int, settings: SD15SamplerSettings) -> list[list[int]]:
    return context_windows(num_frames, settings.context_frames, settings.context_overlap, settings.closed_loop)


def sample(denoiser: Denoiser, noise: torch.Tensor, settings: SD15SamplerSettings, *, dtype: torch.dtype,
           on_step: Callable[[int, int, torch.Tensor], None] | None = None,
           on_window: Callable[[int, int], None] | None = None,
           check: Callable[[], None] | None = None) -> torch.Tensor:
    """Denoise the start latent `noise` [F, 4, h, w] (on the sampling device; its dtype is the integration
    dtype) and return the clean latents in the UNet's space (multiply by 1 / 0.18215 before decoding).

    The denoiser gets its inputs in `dtype`. `on_window(done, total)` is called after every window of every
    step (total = steps x windows), `on_step(done, steps, x0)` after every step with the predicted clean
    latents; `check()` before every window (raise there to cancel)."""
    if noise.ndim != 4 or noise.shape[1] != LATENT_CHANNELS:
        raise MarionetteError(f"The start latent must be [frames, 4, h, w], got {tuple(noise.shape)}.",
                              "Draw it with start_noise.")
    frames = int(noise.shape[0])
    schedule = ddim_schedule(settings.steps, settings.beta_schedule)
    windows = [torch.tensor(w, device=noise.device) for w in window_plan(frames, settings)]
    counts = torch.zeros(frames, dtype=noise.dtype, device=noise.device)
    for window in windows:
        counts.index_add_(0, window, torch.ones(len(window), dtype=noise.dtype, device=noise.device))
    counts = counts.view(-1, 1, 1, 1)
    total_windows, done = settings.steps * len(windows), 0
    branches = (False, True) if settings.uses_cfg else (True,)
    x = noise
    with torch.no_grad():
        for step, timestep in enumerate(schedule.timesteps):
            sums = {branch: torch.zeros_like(x) for branch in branches}
            for window in windows:
                if check is not None:
                    check()
                model_in = x.index_select(0, window).to(dtype)
                for branch in branches:
                    v = denoiser(model_in, timestep, window, branch)
                    sums[branch].index_add_(0, window, v.to(x.dtype))
                done += 1
                if on_window is not None:
                    on_window(done, total_windows)
            v = sums[True] / counts
            if settings.uses_cfg:
                v_uncond = sums[False] / counts
                v = v_uncond + settings.cfg * (v - v_uncond)
            x, x0 = schedule.step(v, timestep, x)
            if on_step is not None:
                on_step(step + 1, settings.steps, x0)
    return x
