"""SVD-xt UNet: key-exact against the released StableAnimator and MimicMotion files (full size, meta device),
and a tiny CPU UNet for the pose residual after conv_in and the ID adapter's effect on the whole network."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from marionette.models.errors import MarionetteError
from marionette.models.svd.configs import svd_xt_unet_config, tiny_unet_config
from marionette.models.stableanimator.id_adapter import id_adapter_processors
from marionette.models.stableanimator.unet import build_stableanimator_unet
from marionette.models.svd.unet import build_unet

KEYS = Path(__file__).parent / "data" / "keys"
FRAMES, H, W = 4, 16, 16
# The 16 spatial cross-attentions the official script gives the ID processor (seeds_stableanimator.md 1.3).
OFFICIAL_ID_LAYERS = ([f"down_blocks.{b}.attentions.{j}" for b in range(3) for j in range(2)]
                      + ["mid_block.attentions.0"]
                      + [f"up_blocks.{b}.attentions.{j}" for b in range(1, 4) for j in range(3)])


def layout(model: nn.Module) -> list:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def released_keys(name: str) -> dict:
    return json.loads((KEYS / name).read_text())["keys"]


def test_full_size_stableanimator_unet_has_exactly_the_released_keys():
    with torch.device("meta"):
        unet = build_stableanimator_unet(svd_xt_unet_config())
    expected = released_keys("stableanimator_unet.json")
    assert len(expected) == 1460
    assert layout(unet) == list(expected.items())  # names, shapes and order
    assert sorted(id_adapter_processors(unet)) == sorted(f"{n}.transformer_blocks.0.attn2" for n in OFFICIAL_ID_LAYERS)


def test_full_size_mimicmotion_unet_has_exactly_the_released_keys():
    with torch.device("meta"):
        unet = build_unet(svd_xt_unet_config())
    expected = [(k[len("unet."):], v) for k, v in released_keys("mimicmotion_1-1.json").items()
                if k.startswith("unet.")]
    assert len(expected) == 1428
    assert layout(unet) == expected
    assert not id_adapter_processors(unet)


@pytest.fixture(scope="module")
def plain_unet():
    torch.manual_seed(0)
    return build_unet(tiny_unet_config())


@pytest.fixture(scope="module")
def id_unet():
    torch.manual_seed(1)
    return build_stableanimator_unet(tiny_unet_config())


def conditions(seed: int, tokens: int):
    g = torch.Generator().manual_seed(seed)
    cfg = tiny_unet_config()
    return {"sample": torch.randn(1, FRAMES, cfg["in_channels"], H, W, generator=g),
            "timestep": torch.tensor(0.4),
            "encoder_hidden_states": torch.randn(1, tokens, cfg["cross_attention_dim"], generator=g),
            "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]])}


def pose(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(FRAMES, tiny_unet_config()["block_out_channels"][0], H, W, generator=g)


@torch.no_grad()
def run(unet, inputs, **extra):
    return unet(**inputs, **extra, return_dict=False)[0]


def test_tiny_forward_shape_and_zero_pose_equals_no_pose(plain_unet):
    inputs = conditions(2, tokens=1)
    out = run(plain_unet, inputs, pose_features=pose(3))
    assert out.shape == (1, FRAMES, 4, H, W) and torch.isfinite(out).all()
    no_pose = run(plain_unet, inputs)
    assert torch.equal(run(plain_unet, inputs, pose_features=torch.zeros_like(pose(3))), no_pose)
    assert (out - no_pose).abs().max() > 1e-3
    assert not plain_unet.conv_in._forward_hooks  # the pose hook lives for one call only


def test_pose_features_enter_exactly_at_the_conv_in_output(plain_unet):
    """Same result as a UNet whose conv_in itself returns conv_in(x) + pose."""
    class ConvInPlusPose(nn.Module):
        def __init__(self, conv, residual):
            super().__init__()
            self.conv, self.residual = conv, residual

        def forward(self, x):
            return self.conv(x) + self.residual

    inputs, features = conditions(4, tokens=1), pose(5)
    ours = run(plain_unet, inputs, pose_features=features)
    conv_in = plain_unet.conv_in
    plain_unet.conv_in = ConvInPlusPose(conv_in, features)
    try:
        reference = run(plain_unet, inputs)
    finally:
        plain_unet.conv_in = conv_in
    assert (ours - reference).abs().max() < 1e-6


def test_wrong_pose_shape_is_rejected_and_leaves_no_hook(plain_unet):
    with pytest.raises(MarionetteError, match="conv_in"):
        run(plain_unet, conditions(6, tokens=1), pose_features=torch.zeros(FRAMES, 32, H // 2, W // 2))
    assert not plain_unet.conv_in._forward_hooks


def set_id_scale(unet, scale):
    for processor in id_adapter_processors(unet).values():
        processor.scale = scale


def test_id_unet_at_scale_zero_equals_the_plain_unet_on_the_clip_token(id_unet):
    """Spatial layers reduce to plain cross-attention and temporal layers see only the CLIP token."""
    plain = build_unet(tiny_unet_config())
    shared = {k: v for k, v in id_unet.state_dict().items() if ".processor." not in k}
    plain.load_state_dict(shared, strict=True)
    inputs = conditions(7, tokens=5)
    set_id_scale(id_unet, 0.0)
    try:
        ours = run(id_unet, inputs, pose_features=pose(8))
    finally:
        set_id_scale(id_unet, 1.0)
    clip_only = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :1])
    assert (ours - run(plain, clip_only, pose_features=pose(8))).abs().max() < 1e-5


def test_face_tokens_act_only_through_the_adapter_weights(id_unet):
    inputs = conditions(9, tokens=5)
    other = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
    other["encoder_hidden_states"][:, 1:] = torch.randn(1, 4, tiny_unet_config()["cross_attention_dim"])
    assert (run(id_unet, inputs) - run(id_unet, other)).abs().max() > 1e-4
    saved = {k: v.clone() for k, v in id_unet.state_dict().items() if ".processor." in k}
    with torch.no_grad():
        for processor in id_adapter_processors(id_unet).values():
            processor.id_to_k.weight.zero_()
            processor.id_to_v.weight.zero_()
    try:  # zero adapter weights: face values cannot matter, so no temporal layer may read them
        assert torch.equal(run(id_unet, inputs), run(id_unet, other))
    finally:
        id_unet.load_state_dict(saved, strict=False)


def test_id_unet_rejects_a_context_without_face_tokens(id_unet):
    with pytest.raises(MarionetteError, match="face tokens"):
        run(id_unet, conditions(10, tokens=1))


def test_meta_build_then_assign_load_reproduces_the_model(id_unet):
    with torch.device("meta"):
        rebuilt = build_stableanimator_unet(tiny_unet_config())
    rebuilt.load_state_dict(id_unet.state_dict(), strict=True, assign=True)
    inputs = conditions(11, tokens=5)
    assert torch.equal(run(rebuilt, inputs, pose_features=pose(12)), run(id_unet, inputs, pose_features=pose(12)))


def test_sample_must_be_five_dimensional(plain_unet):
    inputs = conditions(13, tokens=1)
    inputs["sample"] = inputs["sample"][0]
    with pytest.raises(MarionetteError, match="frames"):
        run(plain_unet, inputs)
