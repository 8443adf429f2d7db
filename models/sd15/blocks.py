"""The SD1.5 UNet's layers, written out so that their state-dict names and order are the released files'.

Champ and Moore-AnimateAnyone save diffusers-named weights from two module trees that differ only in the
order in which a transformer block registers its layers: the reference UNet (a diffusers 0.24 2D UNet)
has `norm1, attn1, norm2, attn2, norm3, ff`; the denoising UNet3D (their `TemporalBasicTransformerBlock`)
and the Champ guidance encoders have `attn1, norm1, attn2, norm2, ff, norm3`. `TransformerBlock(layout=...)`
builds either; the maths is the same.

Reference attention lives here too: a block with `reference_role = "write"` keeps its `norm1` output
(`recorded`), one with `reference_bank` set attends from its own tokens to `[own tokens ; bank tokens]`
in `attn1` (see `reference.py`, which sets both).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError

REFERENCE_LAYOUT = ("norm1", "attn1", "norm2", "attn2", "norm3", "ff")  # diffusers BasicTransformerBlock
DENOISING_LAYOUT = ("attn1", "norm1", "attn2", "norm2", "ff", "norm3")  # TemporalBasicTransformerBlock
TRANSFORMER_NORM_EPS = 1e-6  # the GroupNorm in front of every spatial transformer


def timestep_features(timesteps: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal timestep features as SD1.5 computes them (`flip_sin_to_cos=True`, `freq_shift=0`):
    [cos(t·f_i) | sin(t·f_i)] with f_i = 10000^(-i / (channels/2)), in float32."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (names as diffusers' `TimestepEmbedding`)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, channels)
        self.linear_2 = nn.Linear(channels, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added in between; 1x1 shortcut when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # nearest to the skip's size: 2x, or one less where an odd latent side was halved (e.g. 784 px)
        dtype = x.dtype
        x = F.interpolate(x.float() if dtype == torch.bfloat16 else x, size=size, mode="nearest").to(dtype)
        return self.conv(x)


def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention of projected [B, N, C] tensors with `heads` heads (scale 1/sqrt(C/heads))."""
    batch, _, channels = query.shape

    def split(x):
        return x.view(batch, -1, heads, channels // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).reshape(batch, -1, channels)


class Attention(nn.Module):
    """to_q / to_k / to_v (no bias) and to_out.0 (with bias), as diffusers names them."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise MarionetteError(f"Attention width {dim} is not divisible by {heads} heads.",
                                  "Use a UNet config whose channels are multiples of the head count.")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        """Attention from `x` to `context` (default: `x`); `extra` [1 or B, L, C] tokens are appended to the
        keys/values of every row (reference attention): with B videos of F frames in the B·F rows, each
        video's tokens go to its F frames. They are projected once, before being shared."""
        context = x if context is None else context
        key, value = self.to_k(context), self.to_v(context)
        if extra is not None:
            extra = extra.to(context.device, context.dtype)
            extra_key, extra_value = _per_row(self.to_k(extra), key.shape[0]), _per_row(self.to_v(extra), key.shape[0])
            key, value = torch.cat([key, extra_key], dim=1), torch.cat([value, extra_value], dim=1)
        return self.to_out[0](multi_head_attention(self.to_q(x), key, value, self.heads))


def _per_row(tokens: torch.Tensor, rows: int) -> torch.Tensor:
    """[1 or B, L, C] -> [rows, L, C] with rows = B·F (row r gets video r // F's tokens)."""
    if tokens.shape[0] == 1:
        return tokens.expand(rows, -1, -1)
    if rows % tokens.shape[0]:
        raise MarionetteError(f"{tokens.shape[0]} reference banks do not divide {rows} attention rows.",
                              "Record the reference with batch 1 or with the denoiser's batch size.")
    return tokens.repeat_interleave(rows // tokens.shape[0], dim=0)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """net.0 = GEGLU (dim -> 2·4·dim), net.1 = dropout (no weights), net.2 = Linear(4·dim -> dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention (when `context_dim`), GEGLU feed-forward; pre-LayerNorm, residuals.

    `layout` is the registration order of the layers (REFERENCE_LAYOUT or DENOISING_LAYOUT); blocks
    without cross-attention simply lack `attn2`/`norm2` (Champ's guidance encoders)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None, layout: tuple[str, ...]):
        super().__init__()
        make = {"attn1": lambda: Attention(dim, heads), "norm1": lambda: nn.LayerNorm(dim),
                "attn2": lambda: Attention(dim, heads, context_dim), "norm2": lambda: nn.LayerNorm(dim),
                "ff": lambda: FeedForward(dim), "norm3": lambda: nn.LayerNorm(dim)}
        for name in layout:
            if context_dim is None and name in ("attn2", "norm2"):
                continue
            self.add_module(name, make[name]())
        self.has_cross_attention = context_dim is not None
        self.reference_role: str | None = None  # "write": keep the norm1 output (reference UNet)
        self.recorded: torch.Tensor | None = None
        self.reference_bank: torch.Tensor | None = None  # set: attn1 also attends to these tokens

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.norm1(x)
        if self.reference_role == "write":
            self.recorded = normed
        x = self.attn1(normed, extra=self.reference_bank) + x
        if self.has_cross_attention:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm (eps 1e-6) -> 1x1 conv -> transformer block(s) over the h·w tokens -> 1x1 conv, plus the input."""

    def __init__(self, channels: int, heads: int, context_dim: int | None, groups: int, layout: tuple[str, ...]):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(channels, heads, context_dim, layout)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        for block in self.transformer_blocks:
            h = block(h, context)
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        return self.proj_out(h.contiguous()) + x
