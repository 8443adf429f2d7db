"""Adding DisPose ControlNet residuals to our SVD UNet (`PoseSVDUNet` or any diffusers
`UNetSpatioTemporalConditionModel`), the way the released weights were trained.

diffusers' SVD UNet forward takes no ControlNet residuals, so `controlnet_residuals(unet, residuals)` installs
hooks for the duration of a `with` block: each up block's incoming skip tuple gets its residuals added, and
the mid block's output gets the mid residual. The hidden state that flows down the encoder is untouched, as in
a standard ControlNet.

The official DisPose UNet re-adds the residuals inside its down-block loop: after every down block it adds
the residuals to ALL skips collected so far, so a skip made by encoder stage s (conv_in counting as stage 0)
receives its residual once per remaining stage. On SVD-xt that is x[4,4,4,4,3,3,3,2,2,2,1,1] for the 12
skips; the mid residual is added once. The released weights were trained under that behaviour, so by default
each skip residual is multiplied by its multiplicity (`skip_multiplicity`); `official_multiplicity=False`
gives the textbook ControlNet sum (x1).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import MarionetteError


def skip_counts(unet: nn.Module) -> list[int]:
    """Skip connections each encoder stage produces: conv_in + block 0, then block by block."""
    counts = []
    for i, block in enumerate(unet.down_blocks):
        samplers = getattr(block, "downsamplers", None)
        counts.append(len(block.resnets) + (len(samplers) if samplers is not None else 0) + (1 if i == 0 else 0))
    return counts


def skip_multiplicity(unet: nn.Module) -> tuple[int, ...]:
    """How many times the official DisPose UNet adds each skip's residual (SVD-xt: 4,4,4,4,3,3,3,2,2,2,1,1)."""
    counts = skip_counts(unet)
    return tuple(len(counts) - stage for stage, count in enumerate(counts) for _ in range(count))


def _up_block_slices(unet: nn.Module) -> list[tuple[int, int]]:
    """(first, end) skip indices each up block consumes: they are taken from the end of the skip list."""
    end = sum(skip_counts(unet))
    slices = []
    for block in unet.up_blocks:
        slices.append((end - len(block.resnets), end))
        end -= len(block.resnets)
    return slices


@contextmanager
def controlnet_residuals(unet: nn.Module, residuals: Sequence | None,
                         official_multiplicity: bool = True) -> Iterator[None]:
    """Within the block, every call of `unet` adds these ControlNet residuals.

    `residuals`: a `ControlNetResiduals` (or any (down, mid) pair): `down` one tensor per skip, in encoder
    order, shaped like that skip ([B*F, C, h, w], the batch of the UNet call), `mid` shaped like the mid-block
    output; None adds nothing. The hooks are removed on leaving the block, even after an error."""
    if residuals is None:
        yield
        return
    down, mid = residuals
    factors = skip_multiplicity(unet)
    if len(down) != len(factors):
        raise MarionetteError(
            f"Got {len(down)} ControlNet skip residuals; this UNet has {len(factors)} skip connections.",
            "Use the ControlNet made for this UNet (DisPose.pth with the SVD-xt UNet).")
    scaled = [r * m if official_multiplicity else r for r, m in zip(down, factors)]
    handles = []
    try:
        for block, (first, end) in zip(unet.up_blocks, _up_block_slices(unet)):
            handles.append(block.register_forward_pre_hook(_skip_hook(scaled[first:end], first), with_kwargs=True))
        handles.append(unet.mid_block.register_forward_hook(_mid_hook(mid)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _skip_hook(residuals: list[torch.Tensor], first: int):
    def add(module, args, kwargs):
        skips = kwargs["res_hidden_states_tuple"]
        new = []
        for j, (skip, residual) in enumerate(zip(skips, residuals, strict=True)):
            _check_shape(residual, skip, f"skip residual {first + j}")
            new.append(skip + residual.to(skip.dtype))
        return args, {**kwargs, "res_hidden_states_tuple": tuple(new)}
    return add


def _mid_hook(mid: torch.Tensor | None):
    def add(module, args, output):
        if mid is None:
            return output
        _check_shape(mid, output, "mid-block residual")
        return output + mid.to(output.dtype)
    return add


def _check_shape(residual: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if residual.shape != target.shape:
        raise MarionetteError(
            f"The ControlNet {what} has shape {tuple(residual.shape)}, the UNet's tensor there {tuple(target.shape)}.",
            "Run the ControlNet on exactly the latents of this UNet call (same batch, frames and size).")
