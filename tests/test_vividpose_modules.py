"""VividPose's blocks against plain-torch re-derivations of the paper's equations (fp64), the zero-init
identity with the base SVD UNet, both pose injection points, and the controllers' shapes."""
import math

import pytest
import torch
from torch import nn

from marionette.models.errors import MarionetteError
from marionette.models.svd.unet import build_unet
from marionette.models.vividpose.attention import DecoupledIDAttnProcessor
from marionette.models.vividpose.config import VividPoseConfig, tiny_config
from marionette.models.vividpose.model import cross_attentions
from marionette.models.vividpose.reference_net import spatial_self_attentions
from marionette.models.vividpose.tiny import tiny_vividpose

TOL = 1e-10


def _model(**config):
    return tiny_vividpose(0, tiny_config(**config), torch.float64)


def _heads_attention(q, k, v, heads):
    """softmax(Q K^T / sqrt(d)) V per head, by hand."""
    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = weights @ v
    return out.permute(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)


def _linear(x, layer):
    return x @ layer.weight.T + (0 if layer.bias is None else layer.bias)


def _out(attn, x):
    return _linear(x, attn.to_out[0])


def test_reference_self_attention_is_eq1():
    """z' = softmax(Q_s K_s^T / sqrt d) V_s, Q_s = z W_q, K_s = [z, f_r] W_k, V_s = [z, f_r] W_v, per frame."""
    model = _model()
    name, attn = next(iter(spatial_self_attentions(model.unet).items()))
    torch.manual_seed(1)
    frames, tokens, width = 3, 16, attn.to_q.in_features
    z = torch.randn(frames, tokens, width, dtype=torch.float64)
    f_r = torch.randn(1, 24, width, dtype=torch.float64)
    features = {n: torch.zeros(1, 1, a.to_q.in_features, dtype=torch.float64)
                for n, a in spatial_self_attentions(model.unet).items()}
    features[name] = f_r
    with model.reference_attention(features):
        got = attn(z)
    zr = torch.cat([z, f_r.expand(frames, -1, -1)], dim=1)
    expected = _out(attn, _heads_attention(_linear(z, attn.to_q), _linear(zr, attn.to_k), _linear(zr, attn.to_v),
                                           attn.heads))
    assert (got - expected).abs().max() <= TOL
    plain = _out(attn, _heads_attention(_linear(z, attn.to_q), _linear(z, attn.to_k), _linear(z, attn.to_v),
                                        attn.heads))
    assert (attn(z) - plain).abs().max() <= TOL  # outside the context: plain self-attention again
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("temporal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_decoupled_identity_attention_is_eq3_eq4(temporal, scale):
    """z''' = z' + scale * z'': the CLIP tokens through W_q/W_k/W_v, the identity tokens through the new
    W'_q/W'_k/W'_v, summed before the layer's output projection; spatial and temporal layers alike."""
    model = _model(id_tokens=3)
    layers = {n: a for n, a in cross_attentions(model.unet).items() if ("temporal_" in n) == temporal}
    attn = next(iter(layers.values()))
    processor = attn.processor
    assert isinstance(processor, DecoupledIDAttnProcessor)
    torch.manual_seed(2)
    z = torch.randn(4, 10, attn.to_q.in_features, dtype=torch.float64)
    clip = torch.randn(4, 1, attn.to_k.in_features, dtype=torch.float64)
    ident = torch.randn(4, 3, attn.to_k.in_features, dtype=torch.float64)
    with model.id_scale(scale):
        got = attn(z, encoder_hidden_states=torch.cat([clip, ident], 1))
    image = _heads_attention(_linear(z, attn.to_q), _linear(clip, attn.to_k), _linear(clip, attn.to_v), attn.heads)
    face = _heads_attention(_linear(z, processor.id_to_q), _linear(ident, processor.id_to_k),
                            _linear(ident, processor.id_to_v), attn.heads)
    assert (got - _out(attn, image + scale * face)).abs().max() <= TOL
    assert processor.scale == 1.0  # restored after the context
    zero = attn(z, encoder_hidden_states=torch.cat([clip, torch.zeros_like(ident)], 1))
    assert (zero - _out(attn, image)).abs().max() <= TOL  # zero identity tokens (unconditional) add nothing


def test_every_cross_attention_spatial_and_temporal_has_its_identity_branch():
    model = _model()
    layers = cross_attentions(model.unet)
    assert any("temporal_transformer_blocks" in n for n in layers)
    assert all(isinstance(a.processor, DecoupledIDAttnProcessor) for a in layers.values())
    keys = [k for k in model.state_dict() if ".processor.id_to_" in k]
    assert len(keys) == 3 * len(layers)
    assert not any(".processor." in k for k in _model(identity=False).state_dict())


def _base_unet(model):
    """The plain SVD UNet with the VividPose UNet's own weights (identity processors left out)."""
    base = build_unet(model.config.unet).double().requires_grad_(False)
    state = {k: v for k, v in model.unet.state_dict().items() if ".processor." not in k}
    base.load_state_dict(state, strict=True)
    return base


def _inputs(model, frames=3, seed=3):
    gen = torch.Generator().manual_seed(seed)
    width = model.config.context_dim
    sample = torch.randn(1, frames, 8, 8, 8, generator=gen, dtype=torch.float64)
    clip = torch.randn(1, 1, width, generator=gen, dtype=torch.float64)
    render = torch.rand(frames, 3, 64, 64, generator=gen, dtype=torch.float64)
    skeleton = torch.rand(frames, 3, 64, 64, generator=gen, dtype=torch.float64)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]], dtype=torch.float64)
    return sample, clip, render, skeleton, time_ids


@pytest.mark.parametrize("injection", ["latent", "conv_in"])
def test_fresh_controllers_give_exactly_the_base_model(injection):
    """Zero convs and zero identity values: with no reference features the model IS the SVD UNet."""
    model = tiny_vividpose(0, tiny_config(pose_injection=injection), torch.float64, untouched=True)
    sample, clip, render, skeleton, time_ids = _inputs(model)
    pose = model.pose_features(render, skeleton)
    assert pose.abs().max() == 0
    tokens = model.identity_tokens(torch.randn(1, 512, dtype=torch.float64))
    got = model(sample, torch.tensor(0.3), model.context(clip, tokens), time_ids, pose)[0]
    assert torch.equal(got, model(sample, torch.tensor(0.3), model.context(clip), time_ids)[0])
    with model.id_scale(0.0):  # the identity branch switched off entirely
        assert torch.equal(got, model(sample, torch.tensor(0.3), model.context(clip, tokens), time_ids)[0])
    expected = _base_unet(model)(sample, torch.tensor(0.3), clip, time_ids, return_dict=False)[0]
    # the same maths as the SVD UNet; only the float rounding of differently laid out tensors differs
    assert (got - expected).abs().max() <= 1e-13


def test_latent_injection_adds_f_pose_to_the_noisy_latent_before_conv_in():
    model = _model(pose_injection="latent")
    sample, clip, render, skeleton, time_ids = _inputs(model)
    pose = model.pose_features(render, skeleton)
    assert pose.shape == (3, 4, 8, 8) and pose.abs().max() > 0
    context = model.context(clip)
    got = model(sample, torch.tensor(0.3), context, time_ids, pose)[0]
    moved = sample.clone()
    moved[0, :, :4] += pose
    assert (got - model(moved, torch.tensor(0.3), context, time_ids)[0]).abs().max() <= TOL
    assert (got - model(sample, torch.tensor(0.3), context, time_ids)[0]).abs().max() > 1e-4


def test_conv_in_injection_adds_f_pose_to_conv_in_output():
    model = _model(pose_injection="conv_in")
    sample, clip, render, skeleton, time_ids = _inputs(model)
    pose = model.pose_features(render, skeleton)
    assert pose.shape == (3, model.config.unet["block_out_channels"][0], 8, 8)
    context = model.context(clip)
    got = model(sample, torch.tensor(0.3), context, time_ids, pose)[0]
    handle = model.unet.conv_in.register_forward_hook(lambda module, args, out: out + pose)
    try:
        expected = model(sample, torch.tensor(0.3), context, time_ids)[0]
    finally:
        handle.remove()
    assert (got - expected).abs().max() <= TOL


def test_pose_controller_is_eq5_and_each_tau_is_conv_attention_zero_conv():
    model = _model()
    _, _, render, skeleton, _ = _inputs(model)
    controller = model.pose_controller
    total = model.pose_features(render, skeleton)
    assert (total - (controller.render(render) + controller.skeleton(skeleton))).abs().max() <= TOL
    # τ by hand: SiLU convs, residual self-attention (GroupNorm, multi-head softmax), 1x1 conv
    tau = controller.skeleton
    x = nn.functional.silu(tau.conv_in(skeleton * 2 - 1))
    for block in tau.blocks:
        x = nn.functional.silu(block(x))
    att = tau.attention
    tokens = att.norm(x).flatten(2).transpose(1, 2)
    q, k, v = _linear(tokens, att.to_qkv).chunk(3, dim=-1)
    y = x + _linear(_heads_attention(q, k, v, att.heads), att.proj).transpose(1, 2).reshape(x.shape)
    assert (tau(skeleton) - tau.conv_out(y)).abs().max() <= TOL
    with pytest.raises(MarionetteError, match="same"):
        model.pose_features(render, skeleton[:2])


def test_identity_controller_gives_n_tokens_of_the_clip_width():
    model = _model(id_tokens=4)
    tokens = model.identity_tokens(torch.randn(2, 512, dtype=torch.float64))
    assert tokens.shape == (2, 4, model.config.context_dim)
    assert model.context(torch.zeros(2, 1, model.config.context_dim, dtype=torch.float64), tokens).shape[1] == 5
    with pytest.raises(MarionetteError, match="512"):
        model.identity_tokens(torch.randn(2, 128, dtype=torch.float64))
    off = _model(identity=False)
    with pytest.raises(MarionetteError, match="without the identity controller"):
        off.identity_tokens(torch.randn(1, 512, dtype=torch.float64))


def test_reference_net_features_are_its_self_attention_inputs_and_reach_the_unet():
    model = _model()
    latent = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    clip = torch.randn(1, 1, model.config.context_dim, dtype=torch.float64)
    seen = {}
    handles = [a.register_forward_pre_hook(lambda m, args, name=n: seen.__setitem__(name, args[0]))
               for n, a in spatial_self_attentions(model.reference_net).items()]
    features = model.reference_features(latent, clip)
    for h in handles:
        h.remove()
    assert set(features) == set(seen) == set(spatial_self_attentions(model.unet))
    for name, value in features.items():
        assert torch.equal(value, seen[name])
    # the scaled latent is what the ReferenceNet sees
    direct = model.reference_net.reference_features(latent * model.config.reference_latent_scale, clip)
    assert all(torch.equal(direct[n], features[n]) for n in features)
    sample, _, _, _, time_ids = _inputs(model)
    context = model.context(clip)
    with model.reference_attention(features):
        with_ref = model(sample, torch.tensor(0.3), context, time_ids)[0]
    without = model(sample, torch.tensor(0.3), context, time_ids)[0]
    assert (with_ref - without).abs().max() > 1e-4


def test_reference_net_unused_parameters_are_exactly_those_without_gradient():
    model = tiny_vividpose(0, tiny_config(), torch.float64).requires_grad_(True)
    features = model.reference_features(torch.randn(1, 4, 8, 8, dtype=torch.float64),
                                        torch.randn(1, 1, model.config.context_dim, dtype=torch.float64))
    sum(v.square().sum() for v in features.values()).backward()
    no_grad = sorted(n for n, p in model.reference_net.named_parameters() if p.grad is None)
    assert no_grad == sorted(model.reference_net.unused_parameter_names())


def test_config_refuses_unknown_choices():
    with pytest.raises(MarionetteError, match="pose injection"):
        VividPoseConfig(pose_injection="after")
    with pytest.raises(MarionetteError, match="render type"):
        VividPoseConfig(render_type="photo")
    with pytest.raises(MarionetteError, match="id_tokens"):
        VividPoseConfig(id_tokens=0)
    full = VividPoseConfig()
    assert full.reference_net["cross_attention_dim"] == 1024
    assert full.reference_net["block_out_channels"] == [320, 640, 1280, 1280]
    assert VividPoseConfig.from_json(full.to_json()) == full


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    """A trainer checkpoints the UNet and the ReferenceNet; the reference features stay installed over
    forward and backward (the recomputation reads them), and every trainable part gets the same gradient."""
    import torch.utils.checkpoint as checkpoint_module
    calls = []
    original = checkpoint_module.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "checkpoint", counting)

    def gradients(checkpointing):
        model = _model().train().requires_grad_(True)
        if checkpointing:
            model.unet.enable_gradient_checkpointing()
            model.reference_net.enable_gradient_checkpointing()
        sample, clip, render, skeleton, time_ids = _inputs(model)
        features = model.reference_features(torch.randn(1, 4, 8, 8, dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(4)), clip)
        tokens = model.identity_tokens(torch.ones(1, 512, dtype=torch.float64))
        with model.reference_attention(features):
            out = model(sample, torch.tensor(0.3), model.context(clip, tokens), time_ids,
                        model.pose_features(render, skeleton))[0]
            out.square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients(False)
    assert not calls
    checkpointed = gradients(True)
    assert calls  # the blocks really were recomputed
    assert set(plain) == set(checkpointed)
    assert any(n.startswith("reference_net.") for n in plain) and any(".processor.id_to_" in n for n in plain)
    assert max(float((plain[n] - checkpointed[n]).abs().max()) for n in plain) <= TOL
