"""DDIM as Champ and Moore-AnimateAnyone sample: the official inference contract, as pure functions.

The contract (Champ `configs/inference/inference.yaml` + `enable_zero_snr`, Moore `inference_v2.yaml`; both
build diffusers' `DDIMScheduler` with these values and call `step` with eta 0):
- 1000 training steps, betas from 0.00085 to 0.012;
- zero terminal SNR (Lin et al. 2023, Algorithm 1): sqrt(alpha_bar) shifted so that the last step is pure
  noise and scaled so that the first is unchanged;
- v-prediction: x0 = sqrt(a_t) x - sqrt(1 - a_t) v and eps = sqrt(a_t) v + sqrt(1 - a_t) x;
- "trailing" timesteps: round(arange(1000, 0, -1000 / steps)) - 1 (999, 949, ..., 49 for 20 steps), and the
  step goes from t to t - 1000 // steps (diffusers' rule: for 30 steps 999 -> 966 while the next timestep
  is 965 - a quirk we keep because the released results were sampled with it); below 0 the target is
  alpha_bar = 1 (`set_alpha_to_one`), i.e. the last step returns x0;
- eta 0 (deterministic), no clipping, no thresholding, the start noise unscaled (init_noise_sigma 1).

Beta schedule, and the naming trap. The official INFERENCE configs say "linear"; both repositories TRAIN
with "scaled_linear" (`sched_kwargs.update({"beta_schedule": "scaled_linear"})` in every training script),
so the released weights saw scaled_linear betas, and some users find it cleaner (EchoMimic PR #127 reports
less background noise). We offer both under diffusers' names:
    diffusers "linear"        = linspace(0.00085, 0.012)            = ComfyUI/LDM "sqrt_linear"
    diffusers "scaled_linear" = linspace(sqrt 0.00085, sqrt 0.012)^2 = ComfyUI/LDM "linear"
so ComfyUI's "linear" is the TRAINING schedule, not the official inference one. Our keys are diffusers'.

Tables are computed in float64 (diffusers uses float32; the difference is below 1e-6 relative) and a step
runs in the dtype of the latents it is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MarionetteError

TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
OFFICIAL_BETA_SCHEDULE = "linear"   # the inference yaml of both repositories
TRAINING_BETA_SCHEDULE = "scaled_linear"
BETA_SCHEDULES = (OFFICIAL_BETA_SCHEDULE, TRAINING_BETA_SCHEDULE)


def betas(schedule: str = OFFICIAL_BETA_SCHEDULE, start: float = BETA_START, end: float = BETA_END,
          train_timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """float64 [train_timesteps] betas under diffusers' schedule names (see the module's naming trap)."""
    if schedule == "linear":
        return torch.linspace(start, end, train_timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(start ** 0.5, end ** 0.5, train_timesteps, dtype=torch.float64) ** 2
    raise MarionetteError(f"Unknown beta schedule {schedule!r}.",
                          f"Use 'linear' (the official inference) or 'scaled_linear' (the training schedule).")


def rescale_zero_terminal_snr(beta: torch.Tensor) -> torch.Tensor:
    """Betas whose last alpha_bar is exactly 0 (pure noise) and whose first is unchanged."""
    root = torch.cumprod(1.0 - beta, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root ** 2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def alphas_cumprod(schedule: str = OFFICIAL_BETA_SCHEDULE, zero_snr: bool = True) -> torch.Tensor:
    """float64 [1000] alpha_bar_t of the official scheduler (zero-SNR rescaled unless `zero_snr` is off)."""
    beta = betas(schedule)
    if zero_snr:
        beta = rescale_zero_terminal_snr(beta)
    return torch.cumprod(1.0 - beta, dim=0)


def trailing_timesteps(steps: int, train_timesteps: int = TRAIN_TIMESTEPS) -> list[int]:
    """The `steps` timesteps of "trailing" spacing, first (noisiest) first: 999, ..., ending near 1000/steps - 1."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_timesteps:
        raise MarionetteError(f"steps must be an integer from 1 to {train_timesteps}, got {steps!r}.",
                              "Use 20 (Champ) or 30 (Moore-AnimateAnyone).")
    ratio = train_timesteps / steps
    return [int(t) - 1 for t in np.round(np.arange(train_timesteps, 0, -ratio)).astype(np.int64)]


@dataclass(frozen=True)
class DDIMSchedule:
    """The timesteps of one sampling run and the alpha_bar table they index."""
    alphas_cumprod: torch.Tensor  # float64 [1000]
    timesteps: tuple[int, ...]
    stride: int                   # 1000 // steps: how far one step goes back

    def alpha_bar(self, timestep: int) -> float:
        """alpha_bar at `timestep`; 1 below 0 (a clean sample), as `set_alpha_to_one`."""
        return float(self.alphas_cumprod[timestep]) if timestep >= 0 else 1.0

    def previous(self, timestep: int) -> int:
        return timestep - self.stride

    def step(self, v: torch.Tensor, timestep: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM step (eta 0) from `x` at `timestep` with the v-prediction `v`:
        (x at the previous timestep, the predicted clean sample x0), both in x's dtype."""
        a_t, a_prev = self.alpha_bar(timestep), self.alpha_bar(self.previous(timestep))
        v = v.to(x.dtype)
        x0 = math.sqrt(a_t) * x - math.sqrt(1.0 - a_t) * v
        eps = math.sqrt(a_t) * v + math.sqrt(1.0 - a_t) * x
        return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps, x0


def ddim_schedule(steps: int, beta_schedule: str = OFFICIAL_BETA_SCHEDULE) -> DDIMSchedule:
    """The official sampler's schedule for `steps` steps ("linear": the official inference; "scaled_linear":
    the schedule the weights were trained with)."""
    timesteps = trailing_timesteps(steps)
    return DDIMSchedule(alphas_cumprod(beta_schedule), tuple(timesteps), TRAIN_TIMESTEPS // steps)
