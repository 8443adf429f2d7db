"""Reference attention (ReferenceNet), as Champ's and Moore's `ReferenceAttentionControl` with
`fusion_blocks="full"` does it.

1. `record_reference`: the reference UNet runs once on the clean reference latent
   (`vae.encode(ref).latent_dist.mean · 0.18215`, the reference squashed to the video size) at timestep 0
   with the CLIP image token; each of its 16 spatial transformer blocks keeps its `norm1` output
   (the LayerNormed input of its self-attention): the 16 "banks", [B_ref, h_l·w_l, C_l].
2. `reference_attention(denoiser, banks)`: inside, each of the denoiser's 16 transformer blocks (paired by
   name: down, mid, up) attends in `attn1` from every frame's tokens to `[frame tokens ; bank tokens]` —
   keys and values concatenated along the token axis, queries unchanged.

Only the conditional CFG branch gets reference tokens (the official code recomputes the unconditional rows
without them): run the unconditional pass outside the context. The official code casts the banks to
float16 whatever the run dtype; here they stay in the dtype the reference UNet ran in, cast to the
denoiser's at use.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import MarionetteError
from .refnet_unet import DenoisingUNet3D, ReferenceUNet


@torch.no_grad()
def record_reference(reference_unet: ReferenceUNet, latent: torch.Tensor,
                     encoder_hidden_states: torch.Tensor, timestep: float = 0) -> list[torch.Tensor]:
    """The 16 banks of `latent` [B, 4, h, w] (scaled clean latent) with the CLIP token(s) [B, 1, 768]."""
    blocks = reference_unet.transformer_blocks()
    for block in blocks:
        block.reference_role, block.recorded = "write", None
    try:
        reference_unet(latent, timestep, encoder_hidden_states)
        banks = [block.recorded for block in blocks]
    finally:
        for block in blocks:
            block.reference_role, block.recorded = None, None
    return banks


@contextlib.contextmanager
def reference_attention(denoiser: DenoisingUNet3D, banks: list[torch.Tensor]):
    """Inside: the denoiser's self-attentions also attend to `banks` (from `record_reference`), each bank
    [1 or B, tokens, C] shared by all frames of its video."""
    blocks = denoiser.transformer_blocks()
    if len(banks) != len(blocks):
        raise MarionetteError(f"{len(banks)} reference banks for {len(blocks)} denoiser attention blocks.",
                              "Record the reference with the reference UNet of the same model.")
    for index, (block, bank) in enumerate(zip(blocks, banks)):
        width = block.norm1.normalized_shape[0]
        if bank is None or bank.ndim != 3 or bank.shape[-1] != width:
            raise MarionetteError(
                f"Reference bank {index} has shape {None if bank is None else tuple(bank.shape)}; the denoiser's "
                f"block there is {width} wide.", "Use the reference UNet and denoising UNet of one model.")
    for block, bank in zip(blocks, banks):
        block.reference_bank = bank
    try:
        yield
    finally:
        for block in blocks:
            block.reference_bank = None
