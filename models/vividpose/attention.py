"""VividPose's attention processors for the SVD UNet and its ReferenceNet (diffusers `Attention` modules).

- `ReferenceSelfAttnProcessor` (SVD spatial self-attention, Eq. 1): Q = z W_q, K = [z, f_r] W_k,
  V = [z, f_r] W_v, where f_r is the matching ReferenceNet self-attention's input (concatenated along the
  tokens). Without reference features it is plain self-attention.
- `RecordingSelfAttnProcessor` (ReferenceNet self-attention): plain self-attention that also keeps its
  input, f_r, for the UNet.
- `DecoupledIDAttnProcessor` (every SVD cross-attention, spatial and temporal, Eq. 3-4): the context is
  [CLIP tokens | N identity tokens]; the CLIP part goes through the layer's own q/k/v, the identity part
  through new `id_to_q` / `id_to_k` / `id_to_v`, and the two attention results are summed (the identity one
  times `scale`, id_scale) before the layer's `to_out`. `id_to_v` starts at zero, so a fresh controller
  leaves the base model's output unchanged; zero identity tokens (the unconditional pass) add nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads*d] -> [B, heads, N, d]."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax(Q K^T * attn.scale) V of projected [B, N, C] tensors -> [B, N, C] (before to_out)."""
    heads = attn.heads
    # SDPA's own default scale when the layer uses 1/sqrt(d), as diffusers' AttnProcessor2_0 (same rounding)
    out = F.scaled_dot_product_attention(split_heads(query, heads), split_heads(key, heads),
                                         split_heads(value, heads), scale=None if attn.scale_qk else attn.scale)
    batch, _, tokens, dim = out.shape
    return out.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _check_plain(attn, hidden_states, attention_mask, what: str) -> None:
    if attention_mask is not None or hidden_states.ndim != 3 or attn.group_norm is not None \
            or attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
        raise MarionetteError(f"The {what} processor handles unmasked attention on [batch, tokens, channels] input "
                              "without extra norms (the SVD / SD2.1 transformer blocks).",
                              "Install VividPose's processors only through VividPose's model builders.")


def _finish(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def expand_reference(features: torch.Tensor, batch: int) -> torch.Tensor:
    """Reference features [B_ref, N, C] for a UNet batch of B_ref * frames samples (frames of one video
    are consecutive, as the SVD UNet lays them out)."""
    if batch % features.shape[0]:
        raise MarionetteError(f"{features.shape[0]} reference feature maps do not divide the UNet batch of {batch}.",
                              "Run the ReferenceNet once per video of the batch (or once for all).")
    return features.repeat_interleave(batch // features.shape[0], dim=0)


class ReferenceSelfAttnProcessor:
    """SVD spatial self-attention whose keys and values also see the reference features (`reference`,
    set by `VividPose.reference_attention`; None = plain self-attention)."""

    def __init__(self):
        self.reference: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        _check_plain(attn, hidden_states, attention_mask, "reference self-attention")
        if encoder_hidden_states is not None:
            raise MarionetteError("The reference self-attention processor was called as a cross-attention.",
                                  "Install it only on the spatial attn1 layers.")
        query = attn.to_q(hidden_states)
        context = hidden_states
        if self.reference is not None:
            reference = expand_reference(self.reference, hidden_states.shape[0]).to(hidden_states.dtype)
            if reference.shape[-1] != hidden_states.shape[-1]:
                raise MarionetteError(
                    f"Reference features are {reference.shape[-1]} wide, the layer {hidden_states.shape[-1]}.",
                    "Use the ReferenceNet built with this UNet (VividPose's config).")
            context = torch.cat([hidden_states, reference], dim=1)
        return _finish(attn, attend(attn, query, attn.to_k(context), attn.to_v(context)), hidden_states)


class RecordingSelfAttnProcessor:
    """ReferenceNet self-attention that stores its input under `name` in `store` (a dict it shares with
    the ReferenceNet) before attending normally."""

    def __init__(self, name: str, store: dict):
        self.name, self.store = name, store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        _check_plain(attn, hidden_states, attention_mask, "ReferenceNet self-attention")
        self.store[self.name] = hidden_states
        query = attn.to_q(hidden_states)
        return _finish(attn, attend(attn, query, attn.to_k(hidden_states), attn.to_v(hidden_states)), hidden_states)


class PlainSelfAttnProcessor:
    """Self-attention with the same maths as the two above (for ReferenceNet layers nobody reads)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        _check_plain(attn, hidden_states, attention_mask, "self-attention")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.to_q(hidden_states)
        return _finish(attn, attend(attn, query, attn.to_k(context), attn.to_v(context)), hidden_states)


class DecoupledIDAttnProcessor(nn.Module):
    """Cross-attention over [CLIP tokens | `num_tokens` identity tokens] with separate identity q/k/v.

    Its weights appear in the UNet's state dict as `...attn2.processor.id_to_{q,k,v}.weight`."""

    def __init__(self, query_dim: int, inner_dim: int, context_dim: int, num_tokens: int, scale: float = 1.0):
        super().__init__()
        self.id_to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.id_to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.id_to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.num_tokens = num_tokens
        self.scale = scale

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        _check_plain(attn, hidden_states, attention_mask, "decoupled identity cross-attention")
        context = encoder_hidden_states
        if context is None or context.ndim != 3 or context.shape[1] <= self.num_tokens:
            raise MarionetteError(
                f"The identity cross-attention needs 1+ CLIP tokens followed by {self.num_tokens} identity tokens; "
                f"it got a context of shape {None if context is None else tuple(context.shape)}.",
                "Build the context with VividPose.context(clip, id_tokens) (zeros for the unconditional pass).")
        context = context.to(hidden_states.dtype)
        clip, identity = context[:, :-self.num_tokens].contiguous(), context[:, -self.num_tokens:]
        if attn.norm_cross:
            clip = attn.norm_encoder_hidden_states(clip)
        image = attend(attn, attn.to_q(hidden_states), attn.to_k(clip), attn.to_v(clip))
        if self.scale == 0:
            return _finish(attn, image, hidden_states)
        face = attend(attn, self.id_to_q(hidden_states), self.id_to_k(identity), self.id_to_v(identity))
        return _finish(attn, image + self.scale * face, hidden_states)
