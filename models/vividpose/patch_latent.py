"""A fixed linear latent for models trained without a pretrained VAE: every f x f patch of a frame (3·f²
values) is projected onto K orthonormal patterns, the K principal components of the training frames'
patches (`training.patch_latent` fits them), and each coefficient divided by its component's std. Decoding
undoes both, so it is the best linear reconstruction from K numbers per patch; with K = 3·f² (no
truncation) it is exactly invertible, a rotated pixel unshuffle.

Why each component at unit variance: the EDM sampler treats every latent channel as unit-variance data,
so a channel the network has not learnt yet ends near N(0, 1); with the components' natural stds (the
finest several times smaller than the first) that showed as blocky noise over the frames; whitened, it is
detail of the right size.

Why not a small learnt autoencoder: on 96x128 synthetic people, 16 components of 8x8 patches rebuild the
person at 25 dB PSNR and the small `AutoencoderKLTemporalDecoder` trained here at 18 dB, shifting saturated
colours; and why not the plain pixel unshuffle (K = 192): a UNet whose first block is narrower than the
latent cannot remove the noise of channels it has no room for, so the samples keep it.

It stands where SVD's VAE stands (`encode(x).latent_dist.mode()`, `decode(z, num_frames=...).sample`,
`config.scaling_factor` / `latent_channels` / `downsampling`), so the trainer, the sampler's chunked decode
and the loader use it unchanged. Its patterns, their stds and the mean patch are frozen parameters (the
file carries them; loading checks the patterns are orthonormal).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from torch import nn

from ..errors import MarionetteError

ORTHONORMAL_TOLERANCE = 1e-2  # patterns stored in fp16 stay well inside this


@dataclass
class _Latents:
    """The `latent_dist` of an encoding: a point, so `mode()` is the latents (as SVD's VAE is used)."""
    latents: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.latents


class PatchLatent(nn.Module):
    """Pixels in [-1, 1], [N, 3, H, W] <-> latents [N, K, H/f, W/f] (unscaled, as a VAE's raw latents).
    `basis` [K, 3, f, f]: orthonormal patterns; `scale` [K]: each coefficient's divisor (the component's std);
    `mean` [3, f, f]: the mean patch, removed before projecting."""

    def __init__(self, components: int = 16, factor: int = 8, scaling_factor: float = 1.0):
        super().__init__()
        factor, components = int(factor), int(components)
        if factor < 1 or not 1 <= components <= 3 * factor * factor:
            raise MarionetteError(f"A patch latent takes 1..{3 * factor * factor} components of {factor}x{factor} "
                                  f"patches, got {components}.", "Use e.g. 16 components of 8x8 patches.")
        self.config = FrozenDict(components=components, factor=factor, downsampling=factor,
                                 latent_channels=components, scaling_factor=float(scaling_factor),
                                 force_upcast=False)
        self.basis = nn.Parameter(torch.eye(components, 3 * factor * factor).reshape(components, 3, factor, factor),
                                  requires_grad=False)
        self.scale = nn.Parameter(torch.ones(components), requires_grad=False)
        self.mean = nn.Parameter(torch.zeros(3, factor, factor), requires_grad=False)

    @classmethod
    def from_config(cls, config: dict) -> "PatchLatent":
        return cls(config["components"], config["factor"], config["scaling_factor"])

    def check_basis(self, source: str) -> None:
        """Refuse patterns that are not orthonormal (decoding would not be the projection's inverse)."""
        flat = self.basis.detach().double().cpu().flatten(1)
        error = float((flat @ flat.T - torch.eye(flat.shape[0], dtype=flat.dtype)).abs().max())
        if error > ORTHONORMAL_TOLERANCE:
            raise MarionetteError(f"{source}: the patch latent's patterns are not orthonormal (off by {error:.3g}).",
                                  "Fit it again: python -m models.training patch-latent.")

    def _tiled_mean(self, x: torch.Tensor) -> torch.Tensor:
        f = self.config.factor
        return self.mean.repeat(1, x.shape[-2] // f, x.shape[-1] // f)

    def encode(self, x: torch.Tensor) -> AutoencoderKLOutput:
        f = self.config.factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise MarionetteError(f"The frames are {x.shape[-1]}x{x.shape[-2]}; the patch latent needs multiples "
                                  f"of {f}.", f"Resize to multiples of {f}.")
        x = x.to(self.basis.dtype)
        z = F.conv2d(x - self._tiled_mean(x), self.basis, stride=f)
        return AutoencoderKLOutput(latent_dist=_Latents(z / self.scale[:, None, None]))

    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> DecoderOutput:
        """`num_frames` is accepted as SVD's temporal decoder takes it; each frame decodes on its own."""
        z = z.to(self.basis.dtype) * self.scale[:, None, None]
        x = F.conv_transpose2d(z, self.basis, stride=self.config.factor)
        return DecoderOutput(sample=x + self._tiled_mean(x))
