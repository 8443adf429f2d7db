"""StableAnimator's Face Encoder: an ArcFace identity vector and the CLIP image embedding -> face tokens.

Port of the official `FusionFaceId` (Francis-Rings/StableAnimator, `animation/modules/id_encoder.py`,
together with its `FacePerceiver`, `PerceiverAttention` and `FeedForward`). Module and parameter names
follow the official ones, so the released `Animation/face_encoder.pth` (56 float32 tensors, no prefix)
loads into `FaceEncoder()` with `strict=True`.

What the official pipeline feeds it (`InferenceAnimationPipeline.__call__` in
`animation/pipelines/inference_pipeline_animation.py`, the same in `..._animation_pro.py`):
- `id_embeds`: the raw 512-d antelopev2 `face['embedding']` of the largest face (NOT the unit-length
  `normed_embedding`), or zeros(512) when no face is found; shape (1, 512).
- `clip_embeds`: the conditional CLIP `image_embeds` (projected, 1024-d) unsqueezed to (1, 1, 1024).
The 4 face tokens are appended AFTER the CLIP token to make the UNet's 5-token context; the
unconditional CFG branch uses zeros for all 5 tokens (see `unet_context` / `null_unet_context`).
"""
import torch
from torch import nn

from ..errors import MarionetteError

ID_EMBED_DIM = 512
CLIP_EMBED_DIM = 1024
NUM_FACE_TOKENS = 4


class TokenCrossAttention(nn.Module):
    """Face tokens attend to [image tokens, face tokens] (official `PerceiverAttention`)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.dim_head, self.heads = dim_head, heads
        self.norm1 = nn.LayerNorm(dim)  # image tokens
        self.norm2 = nn.LayerNorm(dim)  # face tokens
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, image_tokens: torch.Tensor, face_tokens: torch.Tensor) -> torch.Tensor:
        image_tokens, face_tokens = self.norm1(image_tokens), self.norm2(face_tokens)
        memory = torch.cat([image_tokens, face_tokens], dim=1)
        key, value = self.to_kv(memory).chunk(2, dim=-1)
        q, k, v = (self._split_heads(t) for t in (self.to_q(face_tokens), key, value))
        # As official: q and k are each scaled by dim_head**-0.25 (smaller fp16 logits) and the
        # softmax runs in float32 before returning to the working dtype.
        factor = self.dim_head ** -0.25
        logits = torch.einsum("bhqc,bhkc->bhqk", q * factor, k * factor)
        probs = logits.float().softmax(dim=-1).to(v.dtype)
        mixed = torch.einsum("bhqk,bhkc->bqhc", probs, v)
        return self.to_out(mixed.flatten(2))

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        return tokens.view(batch, length, self.heads, self.dim_head).transpose(1, 2)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """Pre-norm MLP without biases (official `FeedForward`; keys .0 norm, .1 and .3 linears)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class FaceFusion(nn.Module):
    """Residual attention + MLP layers over the face tokens, then a projection and a norm
    (official `FacePerceiver`)."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int,
                 output_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([TokenCrossAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth))
        # Official init: a fresh encoder's output depends only on norm_out (weights are loaded anyway).
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, face_tokens: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        image_tokens = self.proj_in(image_embeds)
        for attention, mlp in self.layers:
            face_tokens = face_tokens + attention(image_tokens, face_tokens)
            face_tokens = face_tokens + mlp(face_tokens)
        return self.norm_out(self.proj_out(face_tokens))


class FaceEncoder(nn.Module):
    """StableAnimator Face Encoder (official `FusionFaceId`).

    Defaults are the official inference/training configuration (`inference_basic.py`, `train.py`:
    cross_attention_dim=1024, id_embeddings_dim=512, clip_embeddings_dim=1024, num_tokens=4; the
    official class's own default cross_attention_dim is 768 but is never used). `depth`, `dim_head`
    and `ff_mult` are fixed inside the official class (4, 64, 4); heads = cross_attention_dim // dim_head.
    """

    def __init__(self, cross_attention_dim: int = 1024, id_embeddings_dim: int = ID_EMBED_DIM,
                 clip_embeddings_dim: int = CLIP_EMBED_DIM, num_tokens: int = NUM_FACE_TOKENS,
                 depth: int = 4, dim_head: int = 64, ff_mult: int = 4):
        super().__init__()
        if cross_attention_dim % dim_head:
            raise MarionetteError(
                f"cross_attention_dim {cross_attention_dim} is not a multiple of dim_head {dim_head}.",
                "Use a cross_attention_dim divisible by dim_head (official: 1024 and 64).")
        self.cross_attention_dim, self.num_tokens = cross_attention_dim, num_tokens
        self.id_embeddings_dim, self.clip_embeddings_dim = id_embeddings_dim, clip_embeddings_dim
        # The hidden width is twice the ArcFace width (official), not the token width.
        self.proj = nn.Sequential(
            nn.Linear(id_embeddings_dim, 2 * id_embeddings_dim),
            nn.GELU(),
            nn.Linear(2 * id_embeddings_dim, cross_attention_dim * num_tokens),
        )
        self.norm = nn.LayerNorm(cross_attention_dim)
        self.fusion_model = FaceFusion(
            dim=cross_attention_dim, depth=depth, dim_head=dim_head,
            heads=cross_attention_dim // dim_head, embedding_dim=clip_embeddings_dim,
            output_dim=cross_attention_dim, ff_mult=ff_mult)

    def forward(self, id_embeds: torch.Tensor, clip_embeds: torch.Tensor, shortcut: bool = False,
                scale: float = 1.0) -> torch.Tensor:
        """id_embeds [B, 512] (or [512]), clip_embeds [B, N, 1024] (or [B, 1024], [1024]) -> [B, 4, 1024].

        Inputs are moved to the encoder's device and dtype (the official pipeline casts the numpy
        embedding the same way). `shortcut=True` returns `query_tokens + scale * tokens`; the official
        pipelines never use it (default False, scale 1.0).
        """
        id_embeds, clip_embeds = self._prepare_inputs(id_embeds, clip_embeds)
        queries = self.proj(id_embeds).view(-1, self.num_tokens, self.cross_attention_dim)
        queries = self.norm(queries)
        tokens = self.fusion_model(queries, clip_embeds)
        return queries + scale * tokens if shortcut else tokens

    def _prepare_inputs(self, id_embeds, clip_embeds):
        if not isinstance(id_embeds, torch.Tensor) or not isinstance(clip_embeds, torch.Tensor):
            raise MarionetteError("The face encoder needs torch tensors.",
                                  "Convert the ArcFace and CLIP embeddings with torch.as_tensor.")
        if id_embeds.ndim == 1:
            id_embeds = id_embeds.unsqueeze(0)
        clip_embeds = _as_tokens(clip_embeds)
        if id_embeds.ndim != 2 or id_embeds.shape[-1] != self.id_embeddings_dim:
            raise MarionetteError(
                f"The face ID embedding has shape {tuple(id_embeds.shape)}; expected "
                f"(batch, {self.id_embeddings_dim}).",
                "Pass the raw antelopev2 (glintr100) 512-d face embedding.")
        if clip_embeds.ndim != 3 or clip_embeds.shape[-1] != self.clip_embeddings_dim:
            raise MarionetteError(
                f"The CLIP embedding has shape {tuple(clip_embeds.shape)}; expected "
                f"(batch, tokens, {self.clip_embeddings_dim}).",
                "Pass the CLIP vision model's projected image_embeds (SVD's ViT-H/14, 1024-d).")
        if id_embeds.shape[0] != clip_embeds.shape[0]:
            raise MarionetteError(
                f"Batch sizes differ: {id_embeds.shape[0]} face embeddings, "
                f"{clip_embeds.shape[0]} CLIP embeddings.",
                "Give one CLIP embedding per face embedding.")
        weight = self.norm.weight
        return (id_embeds.to(weight.device, weight.dtype), clip_embeds.to(weight.device, weight.dtype))


def _as_tokens(clip_embeds: torch.Tensor) -> torch.Tensor:
    """[C] -> [1, 1, C] and [B, C] -> [B, 1, C] (the pipeline's `image_embeds.unsqueeze(1)`)."""
    if clip_embeds.ndim == 1:
        return clip_embeds.view(1, 1, -1)
    return clip_embeds.unsqueeze(1) if clip_embeds.ndim == 2 else clip_embeds


def unet_context(clip_embeds: torch.Tensor, face_tokens: torch.Tensor) -> torch.Tensor:
    """The conditional UNet `encoder_hidden_states`: CLIP token(s) first, then the face tokens
    ([B, 1+4, 1024]). The UNet's ID processors and temporal blocks take the LAST 4 tokens as face
    tokens, so the order matters (official: `InferenceAnimationPipeline.__call__`, and train.py)."""
    clip_embeds = _as_tokens(clip_embeds)
    if clip_embeds.ndim != 3 or face_tokens.ndim != 3 or clip_embeds.shape[0] != face_tokens.shape[0] \
            or clip_embeds.shape[-1] != face_tokens.shape[-1]:
        raise MarionetteError(
            f"Cannot join CLIP tokens {tuple(clip_embeds.shape)} and face tokens "
            f"{tuple(face_tokens.shape)}.",
            "Pass clip_embeds [B, N, C] and face tokens [B, 4, C] with the same B and C.")
    return torch.cat([clip_embeds, face_tokens.to(clip_embeds.dtype)], dim=1)


def null_unet_context(clip_embeds: torch.Tensor, face_tokens: torch.Tensor) -> torch.Tensor:
    """The unconditional (CFG) context: zeros for the CLIP token and for the face tokens alike,
    with the same shape as `unet_context` (official: zero CLIP embedding + zero face tokens)."""
    return torch.zeros_like(unet_context(clip_embeds, face_tokens))
