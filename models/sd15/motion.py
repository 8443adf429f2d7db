"""AnimateDiff v2 motion modules ("Vanilla" temporal transformers), as Champ and Moore-AnimateAnyone run them.

One module, for a feature map of C channels and F frames (`motion_module.pth`: 21 of them, 588 tensors):
    x [(B F), C, h, w] -> GroupNorm(groups, eps 1e-6) -> tokens [(B F), h·w, C] -> proj_in (Linear)
    -> two temporal self-attentions, each: LayerNorm, add the sinusoidal position table `pe[:F]`, attend
       over the F frames of every pixel (8 heads), add the block input
    -> LayerNorm + GEGLU feed-forward, add -> proj_out (Linear) -> back to [(B F), C, h, w], add x.
`pe` is a stored buffer of 32 rows ([1, 32, C]), so a window holds at most 32 frames (trained with 24).
The official module zero-initialises `proj_out`; built here it is random until weights are loaded.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import MarionetteError
from .blocks import FeedForward, multi_head_attention

MOTION_NORM_EPS = 1e-6


def sinusoid_table(length: int, channels: int) -> torch.Tensor:
    """[1, length, channels]: sin at even, cos at odd channels, frequencies 10000^(-2i/C) (AnimateDiff's)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    table = torch.zeros(1, length, channels)
    table[0, :, 0::2] = torch.sin(position * frequency)
    table[0, :, 1::2] = torch.cos(position * frequency)
    return table


class PositionalEncoding(nn.Module):
    def __init__(self, channels: int, max_len: int):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise MarionetteError(
                f"The motion module sees {frames} frames at once, more than its {self.pe.shape[1]} positions.",
                f"Use context windows of at most {self.pe.shape[1]} frames (the official 24).")
        return x + self.pe[:, :frames].to(x.device, x.dtype)


class TemporalAttention(nn.Module):
    """Self-attention across frames; names as the official `VersatileAttention` (a diffusers Attention)."""

    def __init__(self, dim: int, heads: int, max_len: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, tokens: torch.Tensor, frames: int) -> torch.Tensor:
        """tokens [(B F), h·w, C] -> [(B F), h·w, C]."""
        rows, pixels, channels = tokens.shape
        # [(B F), P, C] -> [(B P), F, C]: each pixel's sequence over the frames
        x = tokens.view(rows // frames, frames, pixels, channels).transpose(1, 2).reshape(-1, frames, channels)
        x = self.pos_encoder(x)
        out = self.to_out[0](multi_head_attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads))
        return out.view(rows // frames, pixels, frames, channels).transpose(1, 2).reshape(rows, pixels, channels)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, attention_blocks: int = 2):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalAttention(dim, heads, max_len)
                                               for _ in range(attention_blocks)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(attention_blocks)])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), frames) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, groups: int, max_len: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=MOTION_NORM_EPS)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, heads, max_len)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        rows, channels, height, width = x.shape
        if rows % frames:
            raise MarionetteError(f"{rows} feature maps are not a whole number of {frames}-frame videos.",
                                  "Pass the frames of every video in the batch together.")
        h = self.norm(x).permute(0, 2, 3, 1).reshape(rows, height * width, channels)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, frames)
        h = self.proj_out(h).reshape(rows, height, width, channels).permute(0, 3, 1, 2)
        return h.contiguous() + x


class MotionModule(nn.Module):
    """`VanillaTemporalModule`: holds `temporal_transformer`; x [(B F), C, h, w] -> same shape."""

    def __init__(self, channels: int, heads: int = 8, groups: int = 32, max_len: int = 32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, heads, groups, max_len)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
