"""StableAnimator Face Encoder: exact official key layout, strict loading, and parity with an
independent re-derivation of the official `FusionFaceId` math (written below with plain tensor ops)."""
import json
import math
from pathlib import Path

import pytest
import torch

from marionette.models.errors import MarionetteError
from marionette.models.stableanimator.face_encoder import FaceEncoder, null_unet_context, unet_context

KEYS_JSON = Path(__file__).parent / "data" / "keys" / "stableanimator_face_encoder.json"
SMALL = dict(cross_attention_dim=128, id_embeddings_dim=48, clip_embeddings_dim=96, num_tokens=3,
             depth=2, dim_head=32, ff_mult=4)


def official_layout():
    with open(KEYS_JSON) as handle:
        return json.load(handle)


def random_state_dict(shapes, seed):
    """Random weights of the given shapes; norms near 1 so every layer matters."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        values = torch.randn(shape, generator=gen)
        if len(shape) == 1 and key.endswith("weight"):  # LayerNorm scale
            state[key] = 1.0 + 0.2 * values
        elif len(shape) == 2:
            state[key] = values / math.sqrt(shape[1])
        else:
            state[key] = 0.2 * values
    return state


# ---- independent re-derivation of the official math -----------------------------------------------

def _layer_norm(x, state, name, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * state[name + ".weight"] + state[name + ".bias"]


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _linear(x, state, name):
    out = x @ state[name + ".weight"].t()
    return out + state[name + ".bias"] if name + ".bias" in state else out


def _attention(image, latents, state, prefix, dim_head):
    """One head at a time: softmax(q k^T / sqrt(d)) v over [image tokens, latent tokens]."""
    image_n = _layer_norm(image, state, prefix + "norm1")
    latents_n = _layer_norm(latents, state, prefix + "norm2")
    q = _linear(latents_n, state, prefix + "to_q")
    kv = _linear(torch.cat([image_n, latents_n], dim=1), state, prefix + "to_kv")
    inner = q.shape[-1]
    k, v = kv[..., :inner], kv[..., inner:]
    heads = []
    for start in range(0, inner, dim_head):
        part = slice(start, start + dim_head)
        scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(dim_head)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., part])
    return _linear(torch.cat(heads, dim=-1), state, prefix + "to_out")


def reference_face_tokens(state, id_embeds, clip_embeds, dim_head, shortcut=False, scale=1.0):
    width = state["norm.weight"].shape[0]
    hidden = _gelu(_linear(id_embeds, state, "proj.0"))
    queries = _linear(hidden, state, "proj.2").reshape(id_embeds.shape[0], -1, width)
    queries = _layer_norm(queries, state, "norm")
    image = _linear(clip_embeds, state, "fusion_model.proj_in")
    latents = queries
    depth = len({key.split(".")[2] for key in state if key.startswith("fusion_model.layers.")})
    for layer in range(depth):
        prefix = f"fusion_model.layers.{layer}."
        latents = latents + _attention(image, latents, state, prefix + "0.", dim_head)
        mlp_in = _layer_norm(latents, state, prefix + "1.0")
        latents = latents + _gelu(mlp_in @ state[prefix + "1.1.weight"].t()) @ state[prefix + "1.3.weight"].t()
    out = _layer_norm(_linear(latents, state, "fusion_model.proj_out"), state, "fusion_model.norm_out")
    return queries + scale * out if shortcut else out


# ---- tests ------------------------------------------------------------------------------------------

def test_full_size_keys_and_shapes_equal_the_released_file():
    layout = official_layout()
    with torch.device("meta"):
        encoder = FaceEncoder()
    ours = {key: list(value.shape) for key, value in encoder.state_dict().items()}
    assert ours == layout["keys"]
    assert list(ours) == list(layout["keys"])  # same order as the official module
    assert len(ours) == layout["count"] == 56
    assert sum(p.numel() for p in encoder.parameters()) == layout["numel"]
    assert all(p.dtype == torch.float32 for p in encoder.parameters())


def test_full_size_parity_with_official_math():
    state = random_state_dict(official_layout()["keys"], seed=0)
    with torch.device("meta"):
        encoder = FaceEncoder()
    encoder.load_state_dict(state, strict=True, assign=True)
    gen = torch.Generator().manual_seed(1)
    id_embeds = 20.0 * torch.randn(2, 512, generator=gen) / math.sqrt(512)  # raw ArcFace norm ~20
    clip_embeds = torch.randn(2, 1, 1024, generator=gen)
    with torch.no_grad():
        ours = encoder(id_embeds, clip_embeds)
        expected = reference_face_tokens(state, id_embeds, clip_embeds, dim_head=64)
    assert ours.shape == (2, 4, 1024)
    error = (ours - expected).abs().max().item()
    assert error < 2e-5, error
    assert expected.std() > 0.5  # the comparison is not between near-constant outputs
    assert not torch.allclose(ours[0], ours[1], atol=1e-2)


def test_reduced_size_parity_with_several_clip_tokens_and_shortcut():
    with torch.device("meta"):
        shapes = {k: list(v.shape) for k, v in FaceEncoder(**SMALL).state_dict().items()}
    state = random_state_dict(shapes, seed=2)
    encoder = FaceEncoder(**SMALL)
    encoder.load_state_dict(state, strict=True)
    gen = torch.Generator().manual_seed(3)
    id_embeds, clip_embeds = torch.randn(3, 48, generator=gen), torch.randn(3, 5, 96, generator=gen)
    with torch.no_grad():
        for shortcut, scale in [(False, 1.0), (True, 0.7)]:
            ours = encoder(id_embeds, clip_embeds, shortcut=shortcut, scale=scale)
            expected = reference_face_tokens(state, id_embeds, clip_embeds, 32, shortcut, scale)
            assert ours.shape == (3, 3, 128)
            assert (ours - expected).abs().max().item() < 1e-5
    shortcut_gap = encoder(id_embeds, clip_embeds, shortcut=True) - encoder(id_embeds, clip_embeds)
    assert shortcut_gap.abs().max() > 0.1


def test_clip_tokens_change_the_face_tokens():
    encoder = FaceEncoder(**SMALL)
    encoder.load_state_dict(random_state_dict({k: list(v.shape) for k, v in encoder.state_dict().items()}, 4))
    id_embeds = torch.randn(1, 48)
    with torch.no_grad():
        a = encoder(id_embeds, torch.randn(1, 1, 96))
        b = encoder(id_embeds, torch.randn(1, 1, 96))
    assert (a - b).abs().max() > 1e-2


def test_strict_load_of_the_official_layout_and_missing_key_fails():
    layout = official_layout()["keys"]
    state = random_state_dict(layout, seed=5)
    with torch.device("meta"):
        encoder = FaceEncoder()
    encoder.load_state_dict(state, strict=True, assign=True)
    loaded = encoder.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in layout)

    missing = dict(state)
    missing.pop("fusion_model.layers.3.1.3.weight")
    with torch.device("meta"):
        fresh = FaceEncoder()
    with pytest.raises(RuntimeError, match="Missing key"):
        fresh.load_state_dict(missing, strict=True, assign=True)
    extra = dict(state, **{"fusion_model.layers.4.0.to_q.weight": torch.zeros(1024, 1024)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(extra, strict=True, assign=True)
    reshaped = dict(state, **{"proj.0.weight": torch.zeros(1024, 768)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        fresh.load_state_dict(reshaped, strict=True, assign=True)


def test_fresh_encoder_outputs_zeros_like_the_official_init():
    """proj_out starts at zero, so an untrained encoder yields norm_out(0) = norm_out.bias = 0."""
    with torch.no_grad():
        tokens = FaceEncoder(**SMALL)(torch.randn(2, 48), torch.randn(2, 1, 96))
    assert tokens.shape == (2, 3, 128) and torch.count_nonzero(tokens) == 0


def test_output_shapes_and_accepted_input_forms():
    encoder = FaceEncoder(**SMALL)
    with torch.no_grad():
        assert encoder(torch.randn(48), torch.randn(96)).shape == (1, 3, 128)
        assert encoder(torch.randn(4, 48), torch.randn(4, 96)).shape == (4, 3, 128)
        assert encoder(torch.randn(2, 48, dtype=torch.float64), torch.randn(2, 2, 96)).dtype == torch.float32


@pytest.mark.parametrize("id_shape, clip_shape", [((2, 47), (2, 1, 96)), ((2, 48), (2, 1, 95)),
                                                  ((2, 48), (3, 1, 96)), ((1, 2, 48), (1, 1, 96))])
def test_bad_inputs_raise_clear_errors(id_shape, clip_shape):
    with pytest.raises(MarionetteError):
        FaceEncoder(**SMALL)(torch.randn(id_shape), torch.randn(clip_shape))


def test_half_precision_stays_close_to_float32():
    encoder = FaceEncoder(**SMALL)
    encoder.load_state_dict(random_state_dict({k: list(v.shape) for k, v in encoder.state_dict().items()}, 6))
    id_embeds, clip_embeds = torch.randn(2, 48), torch.randn(2, 1, 96)
    with torch.no_grad():
        full = encoder(id_embeds, clip_embeds)
        half = encoder.to(torch.bfloat16)(id_embeds, clip_embeds)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.15


def test_unet_context_puts_clip_first_then_face_tokens():
    clip_embeds, face = torch.randn(2, 1, 1024), torch.randn(2, 4, 1024)
    context = unet_context(clip_embeds, face)
    assert context.shape == (2, 5, 1024)
    assert torch.equal(context[:, :1], clip_embeds) and torch.equal(context[:, -4:], face)
    assert torch.equal(unet_context(clip_embeds[:, 0], face), context)  # [B, 1024] CLIP accepted
    null = null_unet_context(clip_embeds, face)
    assert null.shape == (2, 5, 1024) and torch.count_nonzero(null) == 0
    with pytest.raises(MarionetteError):
        unet_context(clip_embeds, torch.randn(3, 4, 1024))
