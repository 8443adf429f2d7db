"""DisPose keypoint correspondence: DIFT features, reference point embeddings, point-feature maps, and SD1.5
loading (diffusers folder, single file), on tiny random SD1.5-shaped modules.

Parity is against re-derivations written here from the official math (lihxxx/DisPose dift_utils.py,
pipeline_ctrl.py, point_adapter.py): a batch of 8 image copies through the VAE with posterior sampling, the
diffusers DDIM scheduler's add_noise, the *full* UNet forward with the up block's output captured, the
image-sized bilinear map with the official (w, h) swap, and the official placement loop.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispose_dift_fixture import (FEATURE_CHANNELS, TINY_TEXT, released_text_state, single_file_state,  # noqa: E402
                                  tiny_configs, tiny_modules, write_folder)

from marionette.models.dispose import dift  # noqa: E402
from marionette.models.sd15 import loader as sd15  # noqa: E402
from marionette.models.errors import MarionetteError  # noqa: E402
from marionette.models.pose.types import PoseFrame, empty_frame  # noqa: E402

KEYS_JSON = Path(__file__).resolve().parent / "data" / "keys" / "sd15_single_file.json"


@pytest.fixture(scope="module")
def modules():
    return tiny_modules(seed=3)


@pytest.fixture(scope="module")
def embedding(modules):
    return dift.prompt_embedding(modules["text_encoder"])


# ------------------------------------------------------------------------------------------ prompt
def plain_clip_text(state: dict, ids: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    """CLIP's text transformer in plain torch: causal pre-LN blocks, quick GELU, final layer norm."""
    state = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}
    x = state["embeddings.token_embedding.weight"][ids] + state["embeddings.position_embedding.weight"][:ids.shape[1]]
    width, tokens = x.shape[-1], ids.shape[1]
    future = torch.ones(tokens, tokens, dtype=torch.bool).triu(1)
    layer = 0
    while f"encoder.layers.{layer}.mlp.fc1.weight" in state:
        prefix = f"encoder.layers.{layer}."
        w = lambda name: (state[prefix + name + ".weight"], state[prefix + name + ".bias"])  # noqa: E731,B023
        h = F.layer_norm(x, (width,), *w("layer_norm1"), eps)
        q, k, v = (F.linear(h, *w(f"self_attn.{n}_proj")).unflatten(-1, (heads, -1)).transpose(1, 2) for n in "qkv")
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        attended = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
        x = x + F.linear(attended.transpose(1, 2).flatten(2), *w("self_attn.out_proj"))
        h = F.linear(F.layer_norm(x, (width,), *w("layer_norm2"), eps), *w("mlp.fc1"))
        x = x + F.linear(h * torch.sigmoid(1.702 * h), *w("mlp.fc2"))
        layer += 1
    return F.layer_norm(x, (width,), state["final_layer_norm.weight"], state["final_layer_norm.bias"], eps)


def test_prompt_embedding_is_the_last_hidden_state(modules, embedding):
    assert len(dift.PROMPT_TOKEN_IDS) == 77 and dift.PROMPT_TOKEN_IDS[:6] == (49406, 1125, 539, 320, 2751, 49407)
    ids = torch.tensor([dift.PROMPT_TOKEN_IDS])
    expected = plain_clip_text(modules["text_encoder"].state_dict(), ids, TINY_TEXT["num_attention_heads"],
                               TINY_TEXT["layer_norm_eps"])
    assert embedding.shape == (1, 77, TINY_TEXT["hidden_size"])
    assert (embedding - expected).abs().max() < 1e-5


# -------------------------------------------------------------------------------------------- DIFT
def rederived_features(modules, embedding, image, t, ensemble, seed):
    """The official OneStepSDPipeline on `ensemble` image copies, with the draws in our documented order."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False)
    vae, unet = modules["vae"], modules["unet"]
    copies = (image[None] / 0.5 - 1.0).repeat(ensemble, 1, 1, 1)
    with torch.no_grad():
        mean, logvar = vae.quant_conv(vae.encoder(copies)).chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        generator = torch.Generator().manual_seed(seed)
        posterior = torch.randn(mean.shape, generator=generator)
        noise = torch.randn(mean.shape, generator=generator)
        latents = (mean + std * posterior) * 0.18215
        noisy = scheduler.add_noise(latents, noise, torch.tensor(t))
        captured = []
        hook = unet.up_blocks[1].register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            full = unet(noisy, t, encoder_hidden_states=embedding.repeat(ensemble, 1, 1)).sample
        finally:
            hook.remove()
    assert full.shape == noisy.shape  # the whole UNet ran
    return captured[0].mean(0, keepdim=True)


@pytest.mark.parametrize("height,width", [(64, 96), (72, 136)])
def test_dift_features_match_the_official_computation(modules, embedding, height, width):
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height))
    ours = dift.dift_features(modules["unet"], modules["vae"], embedding, image, ensemble=3, seed=11)
    expected = rederived_features(modules, embedding, image, 261, 3, 11)
    assert ours.shape == (1, FEATURE_CHANNELS, math.ceil(height / 16), math.ceil(width / 16))
    assert ours.dtype == torch.float32
    assert (ours - expected).abs().max() < 1e-5 * expected.abs().max()


def test_dift_features_are_seeded(modules, embedding):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    run = lambda **kw: dift.dift_features(modules["unet"], modules["vae"], embedding, image, **kw)  # noqa: E731
    first, again, other = run(seed=5), run(seed=5), run(seed=6)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-4
    assert (run(seed=5, chunk=3) - first).abs().max() < 1e-5 * first.abs().max()  # 3 + 3 + 2 copies
    assert (run(seed=5, ensemble=1) - first).abs().max() > 1e-4
    later_t = run(seed=5, t=900)
    assert (later_t - first).abs().max() > 1e-4


def test_dift_features_reject_bad_input(modules, embedding):
    unet, vae = modules["unet"], modules["vae"]
    for image in (torch.rand(64, 64), torch.rand(2, 3, 64, 64), torch.rand(4, 64, 64), torch.rand(3, 60, 64)):
        with pytest.raises(MarionetteError):
            dift.dift_features(unet, vae, embedding, image)
    for kwargs in ({"t": 1000}, {"ensemble": 0}, {"chunk": 0}):
        with pytest.raises(MarionetteError):
            dift.dift_features(unet, vae, embedding, torch.rand(3, 64, 64), **kwargs)
    with pytest.raises(MarionetteError):
        dift.dift_features(unet, vae, embedding[0], torch.rand(3, 64, 64))


# --------------------------------------------------------------------------------- point embeddings
def official_reference_embeddings(features, xy, visible, height, width):
    """pipeline_ctrl: `bz,_,w,h = image.size()`, the map upsampled to size (h, w), read at int(x*w), int(y*h)."""
    w, h = height, width
    upsampled = nn.Upsample(size=(h, w), mode="bilinear")(features)
    out = torch.zeros(18, features.shape[1])
    for k in range(18):
        if visible[k]:
            point_x = max(min(int(xy[k, 0] * w), w - 1), 0)
            point_y = max(min(int(xy[k, 1] * h), h - 1), 0)
            out[k] = upsampled[0, :, point_y, point_x]
    return out


def keypoint_set(frames: int, seed: int):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0.0, 1.0, (frames, 18, 2))
    visible = rng.uniform(size=(frames, 18)) > 0.2
    xy[:, 0] = [0.0, 0.0]  # top-left corner
    xy[:, 1] = [0.9999, 0.9999]  # last cell / last pixel
    xy[:, 2] = [1.3, 0.5]  # right of the image after alignment: clamped
    xy[:, 3] = [-0.05, 0.5]  # left of the image: skipped by the point maps, clamped by the reference read
    visible[:, :4] = True
    return xy, visible


@pytest.mark.parametrize("height,width", [(64, 96), (96, 64), (64, 64)])
def test_reference_embeddings_match_the_upsampled_map(height, width):
    features = torch.randn(1, 24, height // 16, width // 16, generator=torch.Generator().manual_seed(1))
    xy, visible = keypoint_set(1, seed=height + width)
    ref = dift.reference_point_embeddings(features, xy[0], visible[0], height=height, width=width)
    expected = official_reference_embeddings(features, xy[0], visible[0], height, width)
    assert ref.embeddings.shape == (18, 24) and ref.embeddings.dtype == torch.float32
    assert (ref.embeddings - expected).abs().max() < 1e-5
    assert torch.equal(ref.visible, torch.as_tensor(visible[0]))
    assert torch.all(ref.embeddings[~ref.visible] == 0)


def official_point_maps(embeddings, xy, visible, height, width):
    """point_adapter.forward's placement: count starts at 1 and grows on a collision; sum / count."""
    grid_w, grid_h = width // 16, height // 16
    state = torch.zeros(len(xy), embeddings.shape[1], grid_h, grid_w)
    mask = torch.zeros(len(xy), grid_h, grid_w)
    count = torch.ones(len(xy), grid_h, grid_w)
    for f in range(len(xy)):
        for k in range(18):
            if xy[f, k].min() < 0:
                continue
            px = max(min(int(xy[f, k, 0] * grid_w), grid_w - 1), 0)
            py = max(min(int(xy[f, k, 1] * grid_h), grid_h - 1), 0)
            if visible[f, k]:
                if mask[f, py, px] != 0:
                    count[f, py, px] += 1
                state[f, :, py, px] += embeddings[k]
                mask[f, py, px] = 1.0
    return state / count[:, None], mask


def test_point_maps_match_the_official_placement():
    height, width = 64, 96
    xy, visible = keypoint_set(4, seed=7)
    xy[1, 5], xy[1, 6], xy[1, 7] = [0.51, 0.52], [0.53, 0.55], [0.55, 0.6]  # three points in one cell
    visible[1, 5:8] = True
    visible[2] = False  # a frame without a person
    embeddings = torch.randn(18, 12, generator=torch.Generator().manual_seed(2))
    ref_visible = torch.ones(18, dtype=torch.bool)
    ref_visible[6] = False
    embeddings[6] = 0  # what reference_point_embeddings gives for an invisible reference keypoint
    maps = dift.point_feature_maps(dift.ReferencePoints(embeddings, ref_visible), xy, visible,
                                   height=height, width=width)
    expected, expected_mask = official_point_maps(embeddings, xy, visible, height, width)
    assert maps.features.shape == (4, 12, 4, 6) and maps.mask.shape == (4, 4, 6)
    assert (maps.features - expected).abs().max() < 1e-6
    assert torch.equal(maps.mask, expected_mask)
    # x 0.51..0.55 of 6 cells -> column 3, y 0.52..0.6 of 4 cells -> row 2 (other random points may join)
    members = [k for k in range(18) if visible[1, k] and xy[1, k].min() >= 0
               and min(int(xy[1, k, 0] * 6), 5) == 3 and min(int(xy[1, k, 1] * 4), 3) == 2]
    assert {5, 6, 7} <= set(members)
    assert torch.allclose(maps.features[1, :, 2, 3], embeddings[members].mean(0), atol=1e-6)
    assert maps.mask[2].sum() == 0 and maps.features[2].abs().sum() == 0


def test_missing_keypoints_are_masked_out():
    height = width = 64
    xy = np.full((2, 18, 2), 0.5)
    xy[:, :, 0] = np.linspace(0.0, 0.99, 18)  # 18 points over the 4 columns of the middle row
    visible = np.ones((2, 18), bool)
    visible[1, 4] = False  # target keypoint missing
    xy[1, 9] = [-0.01, 0.5]  # target keypoint left of the image
    embeddings = torch.randn(18, 8, generator=torch.Generator().manual_seed(0))
    ref_visible = torch.ones(18, dtype=torch.bool)
    ref_visible[12] = False
    embeddings[12] = 0
    reference = dift.ReferencePoints(embeddings, ref_visible)
    official = dift.point_feature_maps(reference, xy, visible, height=height, width=width)
    masked = dift.point_feature_maps(reference, xy, visible, height=height, width=width, mask_missing_reference=True)
    lone = np.zeros((1, 18, 2))
    lone_visible = np.zeros((1, 18), bool)
    lone[0, 12], lone_visible[0, 12] = [0.9, 0.9], True  # only the point whose reference is missing
    only_missing = dift.point_feature_maps(reference, lone, lone_visible, height=height, width=width)
    assert only_missing.mask.sum() == 1 and only_missing.features.abs().sum() == 0  # official: zero, mask 1
    only_masked = dift.point_feature_maps(reference, lone, lone_visible, height=height, width=width,
                                          mask_missing_reference=True)
    assert only_masked.mask.sum() == 0
    # masking the missing reference point changes the average of the cell it shares
    column = int(xy[0, 12, 0] * 4)
    shared = [k for k in range(18) if int(xy[0, k, 0] * 4) == column and k != 12]
    assert torch.allclose(masked.features[0, :, 2, column], embeddings[shared].mean(0), atol=1e-6)
    assert torch.allclose(official.features[0, :, 2, column], embeddings[shared + [12]].mean(0), atol=1e-6)
    # the missing / off-image target points of frame 1 leave their cells out of the average
    column4, column9 = int(xy[1, 4, 0] * 4), 0
    others4 = [k for k in range(18) if int(xy[1, k, 0] * 4) == column4 and k not in (4, 9)]
    assert torch.allclose(official.features[1, :, 2, column4], embeddings[others4].mean(0), atol=1e-6)
    others9 = [k for k in range(18) if int(xy[1, k, 0] * 4) == column9 and k not in (4, 9)]
    assert torch.allclose(official.features[1, :, 2, column9], embeddings[others9].mean(0), atol=1e-6)


def test_point_maps_feed_the_controlnets_point_adapter():
    """The ControlNet's PointAdapter (point_adapter.py) places the same embeddings itself from the same inputs:
    its levels equal the official MLP-times-mask formula applied to our maps."""
    from marionette.models.dispose.point_adapter import PointAdapter
    height, width = 128, 192
    xy, visible = keypoint_set(3, seed=12)
    embeddings = torch.randn(18, 16, generator=torch.Generator().manual_seed(3))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adapter = PointAdapter((8, 12, 16, 16), (16, 32, 64, 64), embedding_channels=16, hidden_channels=8).eval()
    maps = dift.point_feature_maps(dift.ReferencePoints(embeddings, torch.ones(18, dtype=torch.bool)), xy, visible,
                                   height=height, width=width)
    with torch.no_grad():
        levels = adapter(embeddings[None], torch.as_tensor(xy), torch.as_tensor(visible), (height, width))
        for mlp, stride, level in zip(adapter.model_list, adapter.strides, levels):
            size = (height // stride, width // stride)
            mapped = (mlp(maps.features.permute(0, 2, 3, 1)) * maps.mask[..., None]).permute(0, 3, 1, 2)
            expected = F.interpolate(mapped, size=size, mode="bilinear") * F.interpolate(maps.mask[:, None], size=size)
            assert level.shape == (1, 3, mlp.mlp[2].out_features, *size)
            assert (level[0] - expected).abs().max() < 1e-5


def test_body_keypoints_from_pose_frames():
    body = np.zeros((1, 18, 3), np.float32)
    body[0, :, 0], body[0, :, 1], body[0, :, 2] = np.arange(18) * 10, 20.0, 0.9
    body[0, 3, 2] = 0.2  # below DWPose's 0.3
    frame = PoseFrame(200, 100, body, np.zeros((1, 21, 3)), np.zeros((1, 21, 3)), np.zeros((1, 68, 3)))
    xy, visible = dift.body_keypoints([frame, empty_frame(200, 100)])
    assert xy.shape == (2, 18, 2) and visible.shape == (2, 18)
    assert np.allclose(xy[0, :, 0], np.arange(18) * 10 / 200) and np.allclose(xy[0, :, 1], 0.2)
    assert visible[0].sum() == 17 and not visible[0, 3] and not visible[1].any()


def test_point_inputs_are_validated():
    reference = dift.ReferencePoints(torch.zeros(18, 4), torch.ones(18, dtype=torch.bool))
    with pytest.raises(MarionetteError):
        dift.point_feature_maps(reference, np.zeros((2, 17, 2)), np.ones((2, 17), bool), height=64, width=64)
    with pytest.raises(MarionetteError):
        dift.point_feature_maps(reference, np.zeros((2, 18, 2)), np.ones((2, 18), bool), height=72, width=64)
    with pytest.raises(MarionetteError):
        dift.reference_point_embeddings(torch.zeros(2, 4, 4, 4), np.zeros((18, 2)), np.ones(18, bool),
                                        height=64, width=64)


def test_end_to_end_on_the_tiny_model(modules, embedding):
    height, width = 64, 96
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(4))
    features = dift.dift_features(modules["unet"], modules["vae"], embedding, image, seed=0)
    xy, visible = keypoint_set(5, seed=1)
    reference = dift.reference_point_embeddings(features, xy[0], visible[0], height=height, width=width)
    maps = dift.point_feature_maps(reference, xy, visible, height=height, width=width)
    assert maps.features.shape == (5, FEATURE_CHANNELS, 4, 6) and torch.isfinite(maps.features).all()
    assert maps.mask.sum() > 0


# ------------------------------------------------------------------------------------ SD1.5 loading
def _same_weights(module, reference):
    ours, theirs = module.state_dict(), reference.state_dict()
    return set(ours) == set(theirs) and all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours)


def test_folder_loads_strictly_and_prefers_the_matching_variant(tmp_path, modules):
    write_folder(tmp_path, modules)
    write_folder(tmp_path, modules, variant=".fp16")
    full = sd15.load_sd15_folder(tmp_path, torch.float32, require_sd15=False)
    assert all(full.files[p].endswith("l.safetensors") and ".fp16" not in full.files[p] for p in full.files)
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(full, part), modules[part])
    half = sd15.load_sd15_folder(tmp_path, torch.float16, require_sd15=False)
    assert all(p.endswith(".fp16.safetensors") for p in half.files.values())
    assert next(half.unet.parameters()).dtype == torch.float16 and half.scaling_factor == 0.18215
    ids = half.text_encoder.get_submodule("embeddings").position_ids
    assert torch.equal(ids[0], torch.arange(77))
    with pytest.raises(MarionetteError, match="not Stable Diffusion 1.5"):
        sd15.load_sd15_folder(tmp_path, torch.float32)
    assert torch.equal(dift.prompt_embedding(full.text_encoder), dift.prompt_embedding(modules["text_encoder"]))


def test_folder_errors_name_the_missing_files(tmp_path, modules):
    with pytest.raises(MarionetteError, match="does not exist"):
        sd15.load_sd15_folder(tmp_path / "nowhere")
    write_folder(tmp_path, modules)
    (tmp_path / "text_encoder" / "config.json").unlink()
    with pytest.raises(MarionetteError, match=r"text_encoder/config\.json.*unet/"):
        sd15.load_sd15_folder(tmp_path, require_sd15=False)
    write_folder(tmp_path, modules)
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MarionetteError, match=r"no weights in vae/.*diffusion_pytorch_model\.fp16\.safetensors"):
        sd15.load_sd15_folder(tmp_path, require_sd15=False)
    write_folder(tmp_path, modules)
    (tmp_path / "unet" / "config.json").write_text('{"block_out_channels": [32, 32, 64, 128]}')
    with pytest.raises(MarionetteError, match="does not fit the SD1.5 UNet"):
        sd15.load_sd15_folder(tmp_path, require_sd15=False)


@pytest.mark.parametrize("ema,suffix", [(False, ".safetensors"), (True, ".safetensors"), (False, ".ckpt")])
def test_single_file_loads_into_the_same_modules(tmp_path, modules, ema, suffix):
    from safetensors.torch import save_file
    state = single_file_state(modules, ema=ema)
    path = tmp_path / f"v1-5-pruned{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 840000}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    parts = sd15.load_sd15_single_file(path, torch.float32, configs=tiny_configs())
    for part in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(parts, part), modules[part]), part
    assert parts.files["unet"].endswith("(EMA weights)") == ema
    half = sd15.load_sd15_single_file(path, torch.float16, configs=tiny_configs())
    assert {p.dtype for p in half.unet.parameters()} == {torch.float16}


def test_single_file_is_refused_for_other_files(modules):
    state = single_file_state(modules)
    cases = {
        "SDXL": {**state, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(1)},
        "2.x": {**state, "cond_stage_model.model.ln_final.weight": torch.zeros(1)},
        "does not have": {**state, "control_model.zero_convs.0.0.weight": torch.zeros(1)},
        "no VAE": {k: v for k, v in state.items() if not k.startswith("first_stage_model.")},
        "one part of a diffusers folder": dict(modules["unet"].state_dict()),
    }
    for message, case in cases.items():
        with pytest.raises(MarionetteError, match=message):
            sd15.convert_sd15_single_file(case, tiny_configs())
    renamed = dict(state)
    renamed["model.diffusion_model.input_blocks.1.9.weight"] = renamed.pop("model.diffusion_model.out.2.weight")
    with pytest.raises(MarionetteError, match="have a place"):
        sd15.convert_sd15_single_file(renamed, tiny_configs())
    with pytest.raises(MarionetteError, match="not found"):
        sd15.load_sd15_single_file("/nonexistent/v1-5-pruned-emaonly.safetensors")


def test_full_size_single_file_keys_convert_exactly():
    """The SD1.5 single-file layout (ComfyUI's modules at full size, see test_host_dispose_dift.py) converts
    into exactly the keys and shapes of the full-size modules built from the shipped configs."""
    layout = json.loads(KEYS_JSON.read_text(encoding="utf-8"))["keys"]
    state = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    state.update({name: torch.empty(1000, device="meta") for name in sd15.DDPM_BUFFERS})
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77, device="meta")
    ema = {"model_ema." + "".join(k.split(".")[1:]): torch.empty(v, device="meta")
           for k, v in layout.items() if k.startswith("model.diffusion_model.")}
    modules = sd15._empty_modules(sd15.sd15_configs())
    for source in (state, {**state, **ema}):
        converted = sd15.convert_sd15_single_file(source)
        for part, module in modules.items():
            tensors = converted[part] if part != "text_encoder" else sd15.text_keys_for(module, converted[part])
            assert {k: tuple(v.shape) for k, v in tensors.items()} == \
                   {k: tuple(v.shape) for k, v in module.state_dict().items()}, part
    emaed = sd15.convert_sd15_single_file({**state, **ema})["unet"]
    assert emaed["conv_in.weight"] is ema["model_ema.diffusion_modelinput_blocks00weight"]
    sd15.check_sd15_structure(sd15.SD15_UNET_CONFIG, sd15.SD15_TEXT_CONFIG, "shipped", "")


def test_released_text_state_round_trips(modules):
    state = released_text_state(modules["text_encoder"])
    fitted = sd15.text_keys_for(modules["text_encoder"], state)
    assert set(fitted) == set(modules["text_encoder"].state_dict())
