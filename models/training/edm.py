"""SVD's training objective in the EDM form (Karras et al. 2022, v-parameterised as SVD, sigma_data = 1).

The denoiser is the one our sampler uses (`svd.schedule.edm_scalings`):
    D(x; sigma) = c_skip x + c_out F(c_in x; c_noise),
so the network learns exactly what the sampler asks of it. Noise levels are log-normal,
ln sigma ~ N(P_MEAN, P_STD^2), with the SVD fine-tuning recipe's values (heavier noise than EDM's image
default -1.2 / 1.2, as video models need); the loss is weighted by lambda(sigma) = (sigma^2 + 1) / sigma^2,
EDM's weighting for sigma_data = 1, which makes every noise level's loss an equal-scale regression of F.
"""
from __future__ import annotations

import torch

from ..svd.schedule import edm_scalings

P_MEAN = 0.7
P_STD = 1.6


def sample_key(seed: int, position: int) -> int:
    """The noise key of the sample at global `position` (step * global batch + index) of a run."""
    return (int(seed) * 1_000_000_007 + int(position)) % (2 ** 63 - 1)


def sample_generator(key: int) -> torch.Generator:
    """A CPU generator for one training sample: its noise depends only on its key, never on which process
    or micro-batch draws it, so any split of a global batch over processes draws the same."""
    return torch.Generator().manual_seed(int(key))


def noise_and_sigma(shape: tuple[int, ...], generator: torch.Generator,
                    p_mean: float = P_MEAN, p_std: float = P_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit noise of `shape`, sigma) for one sample, both float32 on the CPU."""
    sigma = (torch.randn((), generator=generator) * p_std + p_mean).exp()
    return torch.randn(shape, generator=generator), sigma


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    return (sigma ** 2 + 1.0) / sigma ** 2


def denoiser_inputs(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor):
    """(c_in * (x0 + sigma * noise), c_noise) for clean latents x0 [B, ...] and sigma [B]."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    sigma = sigma.to(x0.device, torch.float32)
    _, _, c_in, c_noise = edm_scalings(sigma)
    noisy = x0 + sigma.view(shape) * noise.to(x0.device)
    return noisy * c_in.view(shape), noisy, c_noise


def edm_loss(v: torch.Tensor, noisy: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
             regions: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted denoising loss [B] of the network output v (float32 maths).
    `regions` (broadcastable to x0, > 0): a weight per latent element, the squared error averaged with these
    weights instead of evenly (regional loss amplification, as MimicMotion weights its hands); the mean
    weight is divided out per sample, so the loss keeps its scale."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    sigma = sigma.to(x0.device, torch.float32)
    c_skip, c_out, _, _ = edm_scalings(sigma)
    denoised = c_skip.view(shape) * noisy + c_out.view(shape) * v.float()
    squared = (denoised - x0).square()
    if regions is None:
        return loss_weight(sigma) * squared.flatten(1).mean(1)
    regions = regions.to(x0.device, torch.float32).expand_as(squared)
    return loss_weight(sigma) * (regions * squared).flatten(1).sum(1) / regions.flatten(1).sum(1)
