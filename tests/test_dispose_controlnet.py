"""DisPose ControlNet: key-exact against DisPose.pth (full size, meta device); on a tiny random model, the
residuals against a re-derivation of the official forward (time embedding, motion-field encoder, point
adapter scatter loop, zero convs, conditioning scale), the encoder against diffusers' own SVD UNet, the UNet
output with injected residuals against the official UNet's re-adding loop, and the strict loader's errors."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNetSpatioTemporalConditionModel

from marionette.models.dispose.controlnet import (DisPoseControlNet, dispose_controlnet_config,
                                                  load_dispose_controlnet, tiny_dispose_controlnet_config)
from marionette.models.dispose.residuals import controlnet_residuals, skip_multiplicity
from marionette.models.errors import MarionetteError
from marionette.models.svd.configs import svd_xt_unet_config, tiny_unet_config
from marionette.models.svd.unet import build_unet

KEYS = Path(__file__).parent / "data" / "keys" / "dispose_controlnet.json"
FRAMES, H, W = 3, 96, 128  # video size; latent 12 x 16, keypoint grid 6 x 8
TOL = 1e-5


# ------------------------------------------------------------------------------------ full size
def test_full_size_controlnet_has_exactly_the_released_keys():
    released = json.loads(KEYS.read_text())
    with torch.device("meta"):
        model = DisPoseControlNet(**dispose_controlnet_config())
    layout = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert layout == list(released["keys"].items())  # names, shapes and order
    assert len(layout) == released["count"] == 705
    assert sum(math.prod(s) for _, s in layout) == released["numel"] == 685_139_601


def test_full_size_skip_multiplicity_is_the_official_one():
    with torch.device("meta"):
        unet = build_unet(svd_xt_unet_config())
    assert skip_multiplicity(unet) == (4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1)


# ---------------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def controlnet():
    torch.manual_seed(0)
    model = DisPoseControlNet(**tiny_dispose_controlnet_config()).eval().requires_grad_(False)
    with torch.no_grad():  # the zero-initialised convs get weights, or they would hide every path
        for name, p in model.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) or "conv_out_" in name:
                p.normal_(0.0, 0.3)
    return model


def inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    cfg = tiny_unet_config()
    return {"sample": torch.randn(batch, FRAMES, cfg["in_channels"], H // 8, W // 8, generator=g),
            "timestep": torch.tensor(0.7),
            "encoder_hidden_states": torch.randn(batch, 1, cfg["cross_attention_dim"], generator=g),
            "added_time_ids": torch.tensor([[6.0, 127.0, 0.0]] * batch)}


def flows(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(1, FRAMES - 1, 2, H, W, generator=g), torch.randn(1, FRAMES - 1, 2, H, W, generator=g))


def keypoints(seed: int = 3):
    """5 reference keypoints, the 4th undetected on the reference (zero feature); per frame: a collision, an
    invisible target, a negative coordinate and one past the right edge."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(1, 5, 16, generator=g)
    embeddings[0, 3] = 0
    # cells (column of 8, row of 6) are distinct unless stated
    points = torch.tensor([[[0.05, 0.1], [0.3, 0.3], [-0.1, 0.4], [0.6, 0.9], [0.9, 0.5]],
                           [[0.5, 0.5], [0.52, 0.55], [0.1, 0.9], [0.2, 0.05], [0.7, 0.2]],  # 0, 1 collide
                           [[0.4, 0.4], [0.15, 0.6], [0.8, 0.8], [0.35, 0.95], [1.3, 0.5]]])  # 4 past the edge
    visible = torch.ones(FRAMES, 5, dtype=torch.bool)
    visible[2, 0] = False
    return embeddings, points, visible


# Re-derivation of the official forward with plain ops (DisPose ControlNetSVDModel / PointAdapter).
def sinusoid(x: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = x.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # flip_sin_to_cos=True


def mlp2(sd, prefix, x):
    return F.linear(F.silu(F.linear(x, sd[f"{prefix}.linear_1.weight"], sd[f"{prefix}.linear_1.bias"])),
                    sd[f"{prefix}.linear_2.weight"], sd[f"{prefix}.linear_2.bias"])


def official_embedding(sd, timestep, ids, batch):
    c0 = sd["conv_in.weight"].shape[0]
    emb = mlp2(sd, "time_embedding", sinusoid(timestep.reshape(1).expand(batch), c0))
    add_dim = sd["add_embedding.linear_1.weight"].shape[1] // ids.shape[1]
    return emb + mlp2(sd, "add_embedding", sinusoid(ids.flatten(), add_dim).reshape(batch, -1))


def official_flow_branch(sd, name, field):
    field = torch.cat([torch.zeros_like(field[:, :1]), field], 1).flatten(0, 1)
    p = f"controlnet_cond_embedding.{{}}_{name}"
    x = F.silu(F.conv2d(field, sd[p.format("conv_in") + ".weight"], sd[p.format("conv_in") + ".bias"], padding=1))
    i = 0
    while p.format("blocks") + f".{i}.weight" in sd:
        x = F.silu(F.conv2d(x, sd[p.format("blocks") + f".{i}.weight"], sd[p.format("blocks") + f".{i}.bias"],
                            stride=2 if i % 2 else 1, padding=1))
        i += 1
    return F.conv2d(x, sd[p.format("conv_out") + ".weight"], sd[p.format("conv_out") + ".bias"], padding=1)


def official_point_levels(sd, embeddings, points, visible, strides):
    """The official loop: place per point, count collisions, MLP on every cell, mask, resize."""
    level_h, level_w = H // strides[0], W // strides[0]
    state = torch.zeros(FRAMES, embeddings.shape[-1], level_h, level_w)
    mask = torch.zeros(FRAMES, level_h, level_w)
    count = torch.ones(FRAMES, level_h, level_w)
    for f in range(FRAMES):
        for k in range(points.shape[1]):
            x, y = points[f, k].tolist()
            if min(x, y) < 0 or not visible[f, k]:
                continue
            px, py = max(min(int(x * level_w), level_w - 1), 0), max(min(int(y * level_h), level_h - 1), 0)
            if mask[f, py, px] != 0:
                count[f, py, px] += 1
            state[f, :, py, px] += embeddings[0, k]
            mask[f, py, px] = 1.0
    state = (state / count[:, None]).permute(0, 2, 3, 1)
    levels = []
    for i, stride in enumerate(strides):
        p = f"point_adapter.model_list.{i}.mlp"
        feat = F.linear(F.silu(F.linear(state, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"])),
                        sd[f"{p}.2.weight"], sd[f"{p}.2.bias"]) * mask[..., None]
        size = (H // stride, W // stride)
        feat = F.interpolate(feat.permute(0, 3, 1, 2), size=size, mode="bilinear")
        levels.append(feat * F.interpolate(mask[:, None], size=size, mode="nearest"))
    return levels


def official_controlnet(model, x, dense, sparse, points, strength):
    sd = model.state_dict()
    batch = x["sample"].shape[0]
    emb = official_embedding(sd, x["timestep"], x["added_time_ids"], batch).repeat_interleave(FRAMES, 0)
    ctx = x["encoder_hidden_states"].repeat_interleave(FRAMES, 0)
    h = F.conv2d(x["sample"].flatten(0, 1), sd["conv_in.weight"], sd["conv_in.bias"], padding=1)
    cond = (official_flow_branch(sd, "flow", torch.cat([dense] * batch))
            + official_flow_branch(sd, "traj", torch.cat([sparse] * batch)))
    h = h + F.conv2d(cond, sd["controlnet_cond_embedding.conv_final.weight"],
                     sd["controlnet_cond_embedding.conv_final.bias"], padding=1)
    adapter = official_point_levels(sd, *points, strides=(16, 16))
    adapter = [torch.cat([a] * batch) for a in adapter]  # the official eval path repeats them for CFG
    indicator = torch.zeros(batch, FRAMES)
    skips = [h]
    for i, block in enumerate(model.down_blocks):
        extra = {"encoder_hidden_states": ctx} if i == 0 else {}
        h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **extra)
        skips += list(res)
        h = h + adapter.pop(0)
    h = model.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=indicator)
    down = [F.conv2d(s, sd[f"controlnet_down_blocks.{j}.weight"], sd[f"controlnet_down_blocks.{j}.bias"]) * strength
            for j, s in enumerate(skips)]
    mid = F.conv2d(h, sd["controlnet_mid_block.weight"], sd["controlnet_mid_block.bias"]) * strength
    return down, mid


@torch.no_grad()
def test_residuals_match_the_official_forward(controlnet):
    x, (dense, sparse), points = inputs(), flows(), keypoints()
    features = controlnet.point_adapter(*points, image_size=(H, W))
    ours = controlnet(**x, dense_flow=dense, sparse_flow=sparse, point_features=features, strength=0.8)
    down, mid = official_controlnet(controlnet, x, dense, sparse, points, strength=0.8)
    assert len(ours.down) == len(down) == 4
    for a, b in zip(ours.down, down):
        assert a.shape == b.shape
        assert (a - b).abs().max() < TOL * (1 + b.abs().max())
    assert (ours.mid - mid).abs().max() < TOL * (1 + mid.abs().max())
    # each path matters: without flows / points the residuals change
    plain = controlnet(**x, strength=0.8)
    assert (plain.down[0] - ours.down[0]).abs().max() > 1e-2
    no_points = controlnet(**x, dense_flow=dense, sparse_flow=sparse, strength=0.8)
    assert torch.allclose(no_points.down[0], ours.down[0], atol=1e-6)  # points act after the first stage only
    assert (no_points.mid - ours.mid).abs().max() > 1e-3


@torch.no_grad()
def test_point_adapter_places_keypoints_as_the_official_loop(controlnet):
    embeddings, points, visible = keypoints()
    levels = controlnet.point_adapter(embeddings, points, visible, image_size=(H, W))
    reference = official_point_levels(controlnet.state_dict(), embeddings, points, visible, strides=(16, 16))
    assert [tuple(level.shape) for level in levels] == [(1, FRAMES, 32, 6, 8), (1, FRAMES, 64, 6, 8)]
    for ours, ref in zip(levels, reference):
        assert (ours[0] - ref).abs().max() < 1e-6
    occupied = (levels[0][0].abs().sum(1) > 0).sum(dim=(1, 2))
    assert occupied.tolist() == [4, 4, 4]  # frame 0: one negative; frame 1: a collision; frame 2: one invisible


@torch.no_grad()
def test_full_size_level_shapes_follow_the_down_blocks():
    with torch.device("meta"):
        model = DisPoseControlNet(**dispose_controlnet_config())
    assert model.point_adapter.level_sizes((576, 1024)) == [(36, 64), (18, 32), (9, 16), (9, 16)]


@torch.no_grad()
def test_encoder_matches_diffusers_svd_unet(controlnet):
    """With identity output convs and no motion/keypoint input, the residuals are the UNet's own skips."""
    unet = UNetSpatioTemporalConditionModel(**tiny_unet_config()).eval()
    missing, unexpected = unet.load_state_dict(controlnet.state_dict(), strict=False)
    assert all(k.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for k in missing)
    assert all(k.startswith(("controlnet_", "point_adapter.")) for k in unexpected)
    model = DisPoseControlNet(**tiny_dispose_controlnet_config()).eval()
    model.load_state_dict(controlnet.state_dict())
    for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
        conv.weight.copy_(torch.eye(conv.weight.shape[0])[..., None, None])
        conv.bias.zero_()
    captured = {"skips": [], "mid": None}
    hooks = [b.register_forward_pre_hook(lambda m, a, kw: captured["skips"].insert(0, kw["res_hidden_states_tuple"]),
                                         with_kwargs=True) for b in unet.up_blocks]
    hooks.append(unet.mid_block.register_forward_hook(lambda m, a, out: captured.update(mid=out)))
    x = inputs(batch=1)
    unet(**x, return_dict=False)
    for h in hooks:
        h.remove()
    skips = [s for group in captured["skips"] for s in group]
    ours = model(**x)
    assert len(ours.down) == len(skips)
    for a, b in zip(ours.down, skips):
        assert (a - b).abs().max() < 1e-5
    assert (ours.mid - captured["mid"]).abs().max() < 1e-5


# -------------------------------------------------------------------------------- UNet injection
def official_unet(unet, x, pose, down, mid):
    """The official DisPose UNet forward: residuals re-added to all skips after every down block."""
    batch = x["sample"].shape[0]
    emb = unet.time_embedding(unet.time_proj(x["timestep"].reshape(1).expand(batch)))
    emb = emb + unet.add_embedding(unet.add_time_proj(x["added_time_ids"].flatten()).reshape(batch, -1))
    emb = emb.repeat_interleave(FRAMES, 0)
    ctx = x["encoder_hidden_states"].repeat_interleave(FRAMES, 0)
    indicator = torch.zeros(batch, FRAMES)
    h = unet.conv_in(x["sample"].flatten(0, 1)) + pose
    skips = (h,)
    for block in unet.down_blocks:
        extra = {"encoder_hidden_states": ctx} if getattr(block, "has_cross_attention", False) else {}
        h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **extra)
        skips += res
        if down is not None:
            skips = tuple(s + r for s, r in zip(skips, down))
    h = unet.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=ctx, image_only_indicator=indicator)
    if mid is not None:
        h = h + mid
    for block in unet.up_blocks:
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        extra = {"encoder_hidden_states": ctx} if getattr(block, "has_cross_attention", False) else {}
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, image_only_indicator=indicator, **extra)
    h = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
    return h.reshape(batch, FRAMES, *h.shape[1:])


@torch.no_grad()
def test_unet_with_residuals_matches_the_official_unet(controlnet):
    torch.manual_seed(4)
    unet = build_unet(tiny_unet_config())
    x, (dense, sparse) = inputs(batch=1), flows()
    pose = torch.randn(FRAMES, 32, H // 8, W // 8)
    residuals = controlnet(**x, dense_flow=dense, sparse_flow=sparse,
                           point_features=controlnet.point_adapter(*keypoints(), image_size=(H, W)))
    assert skip_multiplicity(unet) == (2, 2, 2, 1)
    with controlnet_residuals(unet, residuals):
        ours = unet(**x, pose_features=pose, return_dict=False)[0]
    reference = official_unet(unet, x, pose, residuals.down, residuals.mid)
    assert (ours - reference).abs().max() < TOL * (1 + reference.abs().max())
    # a textbook ControlNet (each residual once) is a different function
    with controlnet_residuals(unet, residuals, official_multiplicity=False):
        once = unet(**x, pose_features=pose, return_dict=False)[0]
    assert (once - reference).abs().max() > 1e-3
    # the hooks are gone after the block
    after = unet(**x, pose_features=pose, return_dict=False)[0]
    assert (after - official_unet(unet, x, pose, None, None)).abs().max() < 1e-5
    assert (after - ours).abs().max() > 1e-3


@torch.no_grad()
def test_residual_errors(controlnet):
    unet = build_unet(tiny_unet_config())
    x, (dense, sparse) = inputs(batch=1), flows()
    residuals = controlnet(**x)
    with pytest.raises(MarionetteError, match="3 ControlNet skip residuals"):
        with controlnet_residuals(unet, (residuals.down[:3], residuals.mid)):
            pass
    with pytest.raises(MarionetteError, match="same batch"):
        with controlnet_residuals(unet, residuals):
            unet(**inputs(batch=2), return_dict=False)
    with pytest.raises(MarionetteError, match="both motion fields"):
        controlnet(**x, dense_flow=dense)
    with pytest.raises(MarionetteError, match="frames after the reference slot"):
        controlnet(**x, dense_flow=dense[:, :1], sparse_flow=sparse[:, :1])
    with pytest.raises(MarionetteError, match="multiples of 64"):
        features = controlnet.point_adapter(*keypoints(), image_size=(H + 16, W))
        controlnet(**x, point_features=features)
    with pytest.raises(MarionetteError, match="Keypoints must be"):
        controlnet.point_adapter(keypoints()[0], torch.rand(FRAMES, 4, 2), torch.ones(FRAMES, 4), image_size=(H, W))


# ------------------------------------------------------------------------------------- loading
def test_loader_reads_the_file_strictly(controlnet, tmp_path):
    tiny = tiny_dispose_controlnet_config()
    state = controlnet.state_dict()
    path = tmp_path / "DisPose.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # a DataParallel save loads too
    model = load_dispose_controlnet(path, torch.float16, config=tiny)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float16
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[k], v.half()) for k, v in state.items())

    def refused(content: dict) -> str:
        torch.save(content, path)
        with pytest.raises(MarionetteError) as info:
            load_dispose_controlnet(path, torch.float32, config=tiny)
        text = str(info.value)
        assert "DisPose.pth" in text and "ComfyUI/models/dispose" in text
        return text

    text = refused({k: v for k, v in state.items() if k != "point_adapter.model_list.1.mlp.2.bias"})
    assert "1 missing" in text and "point_adapter.model_list.1.mlp.2.bias" in text
    text = refused({**state, "extra.weight": torch.zeros(2)})
    assert "1 unexpected" in text and "extra.weight" in text
    text = refused({**state, "controlnet_mid_block.bias": torch.zeros(3)})
    assert "controlnet_mid_block.bias (3,) instead of (64,)" in text
    unet = UNetSpatioTemporalConditionModel(**tiny_unet_config())
    assert "UNet checkpoint" in refused(unet.state_dict())
    with pytest.raises(MarionetteError, match="ComfyUI/models/dispose"):
        load_dispose_controlnet(tmp_path / "absent.pth")
