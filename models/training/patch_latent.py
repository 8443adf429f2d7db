"""Fitting the patch latent (`vividpose.patch_latent`): the principal components of the f x f patches of
a prepared dataset's training frames, written as a file `vividpose --autoencoder` takes like a trained
autoencoder's export (the VividPose export then bundles it).

    python -m models.training patch-latent --data DATA --output FILE [--components 16] [--factor 8]

Deterministic: every `FRAME_STRIDE`-th frame of every training clip, the covariance and its eigenvectors
in float64, each pattern's sign fixed (its largest entry positive), each coefficient divided by its
component's std: every latent channel has unit variance, as the EDM objective assumes (`scaling_factor` 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vividpose.patch_latent import PatchLatent
from .autoencoder import save_autoencoder, signed_pixels

FRAME_STRIDE = 3  # neighbouring frames add little


def fit_patch_latent(data: str, components: int = 16, factor: int = 8) -> PatchLatent:
    from .dataset import ClipDataset, load_clip
    latent = PatchLatent(components, factor)   # checks the numbers before the data is read
    names = ClipDataset(data, split="train", frames=1).clips
    patches = torch.cat([F.pixel_unshuffle(signed_pixels(load_clip(data, name)["frames"][::FRAME_STRIDE]), factor)
                         .permute(0, 2, 3, 1).flatten(0, 2).double() for name in names])
    mean = patches.mean(0)
    centred = patches - mean
    values, vectors = torch.linalg.eigh(centred.T @ centred / (len(patches) - 1))
    values, vectors = values.flip(0)[:components], vectors.flip(1)[:, :components].T
    largest = vectors.gather(1, vectors.abs().argmax(1, keepdim=True))
    vectors = vectors * largest.sign()
    with torch.no_grad():
        latent.basis.copy_(vectors.reshape(components, 3, factor, factor))
        latent.mean.copy_(mean.reshape(3, factor, factor))
        latent.scale.copy_(values.clamp(min=1e-12).sqrt())
    return latent


def write_patch_latent(data: str, output: str, components: int = 16, factor: int = 8,
                       metadata: dict[str, str] | None = None) -> PatchLatent:
    latent = fit_patch_latent(data, components, factor)
    save_autoencoder(latent, output, latent.config.scaling_factor, metadata)
    return latent
