"""StableAnimator's ID adapter: face tokens injected into every spatial cross-attention of the SVD UNet.

The context handed to the UNet is `[CLIP token(s) | face tokens]` (1 + 4 tokens officially). In each spatial
cross-attention (`transformer_blocks.*.attn2`) the query attends twice, once to the CLIP part through the
layer's own `to_k`/`to_v` and once to the face tokens through the adapter's `id_to_k`/`id_to_v`. Before the
two are summed, the face result is shifted and rescaled to the image result's mean and standard deviation,
one scalar pair per sample (frame) over all tokens and channels, unbiased std, eps on the face std only. The
sum then goes through the layer's shared `to_out`. Temporal cross-attentions see only the CLIP part.

With zero face tokens (the unconditional classifier-free-guidance branch) the face result is zero, its std
is zero, and the aligned face term collapses to the image mean: the layer outputs `to_out(A_img + mean)`.
That is what the released weights were used with, so it is kept.
"""
import torch
import torch.nn.functional as F
from torch import nn
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..errors import MarionetteError

NUM_FACE_TOKENS = 4
ALIGN_EPS = 1e-5


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads*d] -> [B, heads, N, d]."""
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads*d] (head-major channel order, as diffusers' to_out expects)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn: Attention) -> torch.Tensor:
    """Multi-head SDPA of already projected [B, N, C] tensors; returns [B, N, C] before `to_out`."""
    heads = attn.heads
    out = F.scaled_dot_product_attention(_split_heads(query, heads), _split_heads(key, heads),
                                         _split_heads(value, heads), scale=attn.scale)
    return _merge_heads(out)


def align_to_reference(face: torch.Tensor, image: torch.Tensor, eps: float = ALIGN_EPS) -> torch.Tensor:
    """Give `face` the per-sample mean and (unbiased) std of `image`; statistics over all non-batch dims."""
    dims = tuple(range(1, face.ndim))
    face_mean, face_std = face.mean(dim=dims, keepdim=True), face.std(dim=dims, keepdim=True)
    image_mean, image_std = image.mean(dim=dims, keepdim=True), image.std(dim=dims, keepdim=True)
    return (face - face_mean) * (image_std / (face_std + eps)) + image_mean


def _check_context(context, num_face_tokens: int) -> None:
    if context is None or context.ndim != 3:
        raise MarionetteError(
            "The ID-adapter cross-attention needs a [batch, tokens, channels] context; it got "
            f"{None if context is None else tuple(context.shape)}.",
            "Pass encoder_hidden_states = CLIP image embedding followed by the face encoder's tokens.")
    if context.shape[1] <= num_face_tokens:
        raise MarionetteError(
            f"The ID-adapter UNet expects at least 1 CLIP token followed by {num_face_tokens} face tokens, "
            f"but the context has {context.shape[1]} tokens.",
            f"Concatenate the CLIP embedding [B, 1, C] with the face tokens [B, {num_face_tokens}, C] "
            "(zeros for the unconditional branch).")


class IDAdapterAttnProcessor(nn.Module):
    """Cross-attention processor with a distribution-aligned face branch (StableAnimator's ID adapter).

    Holds the adapter weights `id_to_k`, `id_to_v` (Linear(cross_attention_dim -> hidden_size), no bias);
    installed as `attn.processor` they appear in the UNet's state dict as `...attn2.processor.id_to_{k,v}`.
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int = 1024,
                 num_face_tokens: int = NUM_FACE_TOKENS, scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.id_to_k = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.id_to_v = nn.Linear(cross_attention_dim, hidden_size, bias=False, device=device, dtype=dtype)
        self.num_face_tokens = num_face_tokens
        self.scale = scale

    def forward(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                attention_mask=None, temb=None) -> torch.Tensor:
        if attention_mask is not None or hidden_states.ndim != 3:
            raise MarionetteError(
                "The ID-adapter processor handles unmasked cross-attention on [batch, tokens, channels] input.",
                "Install it only on the spatial cross-attentions of the SVD UNet (install_id_adapter).")
        _check_context(encoder_hidden_states, self.num_face_tokens)
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = encoder_hidden_states.to(hidden_states.dtype)
        image_context = context[:, :-self.num_face_tokens]
        face_context = context[:, -self.num_face_tokens:]
        if attn.norm_cross:
            image_context = attn.norm_encoder_hidden_states(image_context)

        query = attn.to_q(hidden_states)
        image = _attend(query, attn.to_k(image_context), attn.to_v(image_context), attn)
        face = _attend(query, self.id_to_k(face_context), self.id_to_v(face_context), attn)
        mixed = image + self.scale * align_to_reference(face, image)

        out = attn.to_out[1](attn.to_out[0](mixed))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class CLIPContextAttnProcessor:
    """SDPA attention that drops the trailing face tokens from the context first.

    StableAnimator's temporal transformer blocks cross-attend only to the CLIP part of the context; with
    this on the temporal `attn2` the stock diffusers blocks behave the same. Holds no weights.
    """

    def __init__(self, num_face_tokens: int = NUM_FACE_TOKENS):
        self.num_face_tokens = num_face_tokens
        self._sdpa = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None,
                 attention_mask=None, temb=None) -> torch.Tensor:
        _check_context(encoder_hidden_states, self.num_face_tokens)
        context = encoder_hidden_states[:, :-self.num_face_tokens]
        return self._sdpa(attn, hidden_states, encoder_hidden_states=context,
                          attention_mask=attention_mask, temb=temb)


def _cross_attentions(unet: nn.Module, temporal: bool) -> dict:
    """The `attn2` modules of the spatial (or temporal) transformer blocks, by module name."""
    found = {}
    for name, module in unet.named_modules():
        if not (isinstance(module, Attention) and name.endswith(".attn2")):
            continue
        # ".transformer_blocks." never matches inside ".temporal_transformer_blocks." (an "_" precedes it)
        if (".temporal_transformer_blocks." if temporal else ".transformer_blocks.") in name:
            found[name] = module
    return found


def id_adapter_processors(unet: nn.Module) -> dict:
    """Installed ID-adapter processors by attention-module name (empty if none is installed)."""
    return {name: attn.processor for name, attn in _cross_attentions(unet, temporal=False).items()
            if isinstance(attn.processor, IDAdapterAttnProcessor)}


def install_id_adapter(unet: nn.Module, num_face_tokens: int = NUM_FACE_TOKENS, scale: float = 1.0) -> list:
    """Put StableAnimator's ID adapter into an SVD UNet, as the official inference script does.

    Every spatial cross-attention gets an `IDAdapterAttnProcessor` whose `id_to_k`/`id_to_v` start as copies
    of that layer's `to_k`/`to_v` (the official initialisation; a checkpoint load then overwrites them).
    Every temporal cross-attention gets a `CLIPContextAttnProcessor`. Returns the adapted module names.
    """
    if id_adapter_processors(unet):
        raise MarionetteError("This UNet already has the ID adapter installed.",
                              "Build a fresh UNet with build_unet(config, id_adapter=True).")
    spatial = _cross_attentions(unet, temporal=False)
    if not spatial:
        raise MarionetteError("No spatial cross-attention (transformer_blocks.*.attn2) found in this model.",
                              "Install the ID adapter on an SVD UNetSpatioTemporalConditionModel.")
    for attn in spatial.values():
        weight_k, weight_v = attn.to_k.weight, attn.to_v.weight
        processor = IDAdapterAttnProcessor(weight_k.shape[0], weight_k.shape[1], num_face_tokens, scale,
                                           device=weight_k.device, dtype=weight_k.dtype)
        with torch.no_grad():
            processor.id_to_k.weight.copy_(weight_k)
            processor.id_to_v.weight.copy_(weight_v)
        attn.set_processor(processor)  # an nn.Module processor is registered as the submodule `processor`
    for attn in _cross_attentions(unet, temporal=True).values():
        attn.set_processor(CLIPContextAttnProcessor(num_face_tokens))
    return list(spatial)
