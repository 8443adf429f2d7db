"""VividPose's identity controller (ArcFace embedding -> MLP -> N tokens of the CLIP width) and pose
controller (τ1 on the body render + τ2 on the skeleton, each conv + self-attention + zero conv, summed:
Eq. 5). Plain modules; the zero convs make a fresh pose controller output exact zeros."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError


class IDController(nn.Module):
    """f_id [B, arcface_dim] -> f_id' [B, tokens, context_dim]: Linear, GELU, Linear, LayerNorm."""

    def __init__(self, arcface_dim: int, context_dim: int, tokens: int):
        super().__init__()
        self.tokens, self.context_dim = tokens, context_dim
        self.proj_in = nn.Linear(arcface_dim, context_dim * 2)
        self.proj_out = nn.Linear(context_dim * 2, context_dim * tokens)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.ndim != 2 or embedding.shape[1] != self.proj_in.in_features:
            raise MarionetteError(f"The identity controller takes [batch, {self.proj_in.in_features}] ArcFace "
                                  f"embeddings, got {tuple(embedding.shape)}.",
                                  "Pass antelopev2's raw 512-d face embedding (one per video).")
        hidden = self.proj_out(F.gelu(self.proj_in(embedding.to(self.proj_in.weight.dtype))))
        return self.norm(hidden.view(embedding.shape[0], self.tokens, self.context_dim))


class SpatialSelfAttention(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map (GroupNorm first)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(32, channels), channels)
        self.to_qkv = nn.Linear(channels, channels * 3)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = (t.view(batch, -1, self.heads, channels // self.heads).transpose(1, 2)
                   for t in self.to_qkv(tokens).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, channels)
        return x + self.proj(out).transpose(1, 2).reshape(batch, channels, height, width)


class PoseEncoder(nn.Module):
    """One τ: image [N, 3, H, W] in [0, 1] -> features [N, out, H/8, W/8]. Champ's guidance-encoder shape
    (3x3 conv, three stride-2 stages), self-attention at the deepest width, zero-initialised 1x1 conv."""

    def __init__(self, channels: tuple[int, ...], heads: int, out_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.attention = SpatialSelfAttention(channels[-1], heads)
        self.conv_out = nn.Conv2d(channels[-1], out_channels, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(image.to(self.conv_in.weight.dtype) * 2 - 1))
        for block in self.blocks:
            x = F.silu(block(x))
        return self.conv_out(self.attention(x))


class PoseController(nn.Module):
    """f_pose = τ1(I_render) + τ2(I_skeleton) (Eq. 5)."""

    def __init__(self, channels: tuple[int, ...], heads: int, out_channels: int):
        super().__init__()
        self.render = PoseEncoder(channels, heads, out_channels)    # τ1
        self.skeleton = PoseEncoder(channels, heads, out_channels)  # τ2

    def forward(self, render: torch.Tensor, skeleton: torch.Tensor) -> torch.Tensor:
        """render, skeleton [N, 3, H, W] in [0, 1], H and W multiples of 8."""
        if render.shape != skeleton.shape or render.ndim != 4 or render.shape[1] != 3:
            raise MarionetteError(f"The render frames {tuple(render.shape)} and skeleton frames "
                                  f"{tuple(skeleton.shape)} must be the same [frames, 3, H, W].",
                                  "Render both at the reference size, one per driving frame (RenderGuidance).")
        if render.shape[-1] % 8 or render.shape[-2] % 8:
            raise MarionetteError(f"Pose frames of {render.shape[-1]}x{render.shape[-2]} are not multiples of 8.",
                                  "Draw them at the reference size (a multiple of 64).")
        return self.render(render) + self.skeleton(skeleton)
