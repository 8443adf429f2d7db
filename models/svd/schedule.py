"""The pieces of the SVD sampling schedule as the official pipelines use them, as pure functions.

Facts (diffusers `EulerDiscreteScheduler` with SVD-xt's `scheduler_config.json`, used unchanged by
`StableVideoDiffusionPipeline`, StableAnimator's `InferenceAnimationPipeline` and `MimicMotionPipeline`):
- sigmas: Karras et al. (rho 7) from 700 down to 0.002 over `steps` values, computed in float64 and stored
  as float32, then a final 0 (`final_sigmas_type` "zero");
- v-prediction in the EDM form with sigma_data = 1: the UNet sees `x / sqrt(sigma^2 + 1)` and the timestep
  `0.25 * ln(sigma)` (`timestep_type` "continuous"); the denoised estimate is
  `x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)`;
- Euler with no churn: `x <- x + (x - x0) / sigma * (sigma_next - sigma)`;
- the start noise is scaled by `sqrt(sigma_max^2 + 1)` (`init_noise_sigma` under "leading" spacing), not by
  sigma_max as in k-diffusion;
- long videos are cut into windows that all contain frame 0, fused with triangular weights
  (MimicMotion's `indices` and `weight` in `MimicMotionPipeline.__call__`, copied by StableAnimator).
"""
import numpy as np
import torch

SIGMA_MIN = 0.002
SIGMA_MAX = 700.0
RHO = 7.0


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                  rho: float = RHO) -> torch.Tensor:
    """float32 tensor [steps + 1]: `steps` Karras noise levels from sigma_max to sigma_min, then 0."""
    ramp = np.linspace(0.0, 1.0, steps)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))


def edm_scalings(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) for SVD's v-prediction at noise level `sigma` (sigma_data = 1):
    x0 = c_skip * x + c_out * unet(c_in * x, c_noise)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    variance = sigma ** 2 + 1.0
    return 1.0 / variance, -sigma / variance.sqrt(), 1.0 / variance.sqrt(), 0.25 * sigma.log()


def init_noise_scale(sigma_max: float | torch.Tensor) -> float:
    """What the official pipelines multiply the unit start noise by: sqrt(sigma_max^2 + 1)."""
    return float((torch.as_tensor(sigma_max, dtype=torch.float32) ** 2 + 1.0).sqrt())


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One deterministic Euler step of the probability-flow ODE from `sigma` to `sigma_next`."""
    return x + (x - x0) / sigma * (sigma_next - sigma)


def guidance_scales(num_frames: int, cfg_min: float, cfg_max: float) -> torch.Tensor:
    """Per-frame CFG scales [num_frames], linear from the first frame to the last (whole video, not per
    window, as the official pipelines do)."""
    return torch.linspace(cfg_min, cfg_max, num_frames)


def tile_windows(num_frames: int, tile_size: int, tile_overlap: int) -> list[list[int]]:
    """Frame indices of each window: frame 0 (the anchor) plus `tile_size - 1` consecutive frames, windows
    `tile_size - tile_overlap` apart, and a last window flush with the end if the stride left it out.
    Needs 2 <= tile_size <= num_frames and 1 <= tile_overlap < tile_size (checked by the caller): with no
    overlap the frame between two windows is in neither."""
    stride = tile_size - tile_overlap
    windows = [[0, *range(start + 1, start + tile_size)]
               for start in range(0, num_frames - tile_size + 1, stride)]
    if windows[-1][-1] < num_frames - 1:
        windows.append([0, *range(num_frames - tile_size + 1, num_frames)])
    return windows


def tile_weights(tile_size: int) -> torch.Tensor:
    """Triangular fusion weights [tile_size] by position in a window: (k + 0.5) * 2 / T folded at 1, so
    the middle weighs about 1 and the ends (the anchor slot included) 1/T."""
    ramp = (torch.arange(tile_size, dtype=torch.float32) + 0.5) * 2.0 / tile_size
    return torch.minimum(ramp, 2.0 - ramp)


def fusion_weights(num_frames: int, windows: list[list[int]], weights: torch.Tensor) -> list[torch.Tensor]:
    """Per window, the weights normalised per frame so that each frame's weights over all windows sum
    to 1 (the official code divides the weighted sum by the per-frame total after the loop)."""
    total = torch.zeros(num_frames, dtype=weights.dtype)
    for window in windows:
        total[window] += weights
    return [weights / total[window] for window in windows]
