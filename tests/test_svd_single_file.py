"""Single-file SVD checkpoints: key-exact conversion at full size, CLIP math, and the errors (library tier).

The full-size key list (`tests/data/keys/svd_xt_single_file.json`, made from ComfyUI's modules; see
tests/test_host_svd_single_file.py) is converted on the meta device and must give exactly the keys and
shapes of our diffusers/transformers modules built from the shipped SVD-xt configs, using every file tensor
once except the documented unused ones. Numerical parity of the UNet and VAE maps is in the host tier.
"""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from marionette.models.errors import MarionetteError
from marionette.models.svd import single_file_keys as keys_module
from marionette.models.svd.single_file import (convert_svd_single_file, load_svd_single_file,
                                               plan_svd_single_file)
from marionette.models.svd.single_file_keys import svd_xt_configs
from marionette.models.svd.unet import build_unet

KEYS = json.loads((Path(__file__).parent / "data" / "keys" / "svd_xt_single_file.json").read_text(encoding="utf-8"))
VISUAL = "conditioner.embedders.0.open_clip.model.visual."
DECODER = "first_stage_model.decoder."


def _meta(layout: dict) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in layout.items()}


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def module_shapes():
    """Key -> shape of our three modules at SVD-xt size (meta device)."""
    configs = svd_xt_configs()
    with torch.device("meta"):
        modules = {"unet": build_unet(configs.unet),
                   "vae": AutoencoderKLTemporalDecoder.from_config(configs.vae),
                   "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.image_encoder))}
    return {part: _shapes(module.state_dict()) for part, module in modules.items()}


def _image_decoder_file() -> dict:
    layout = {k: v for k, v in KEYS["keys"].items() if not k.startswith(DECODER)}
    layout.update(KEYS["image_decoder_keys"])
    return _meta(layout)


def _comfyui_saved_file(module_shapes) -> dict:
    """ImageOnlyCheckpointSave's layout: UNet and first stage as released, CLIP tower in transformers naming,
    no conditioner autoencoder, ComfyUI's sampling extras."""
    layout = {k: v for k, v in KEYS["keys"].items() if not k.startswith("conditioner.")}
    layout.update({VISUAL + k: v for k, v in module_shapes["image_encoder"].items()})
    layout.update({"edm_vpred.sigma_max": [], "edm_vpred.sigma_min": []})
    return _meta(layout)


# ------------------------------------------------------------------------------------ key exactness
def test_released_layout_converts_key_exactly(module_shapes):
    state = _meta(KEYS["keys"])
    plan = plan_svd_single_file(state)
    assert tuple(plan.layout) == ("temporal", "conditioner", "open_clip")
    converted = convert_svd_single_file(state)
    assert {part: _shapes(tensors) for part, tensors in converted.items()} == module_shapes
    assert {part: len(shapes) for part, shapes in module_shapes.items()} == {
        "unet": 1428, "vae": 374, "image_encoder": 520}
    used = [source for rule in plan.rules for source in rule.sources]
    assert len(used) == len(set(used)) == len(state) - len(plan.unused)  # every other tensor used once
    assert sorted(plan.unused + used) == sorted(state)
    generated = [rule for rule in plan.rules if not rule.sources]
    assert [t for rule in generated for t in rule.targets] == []  # the released file has everything


def test_unused_tensors_are_exactly_the_documented_ones():
    plan = plan_svd_single_file(_meta(KEYS["keys"]))
    groups = {"text": 0, "conditioning decoder": 0, "first-stage encoder": 0}
    for key in plan.unused:
        if key in keys_module.UNUSED_EXACT:
            groups["text"] += 1
        elif key.startswith(keys_module.UNUSED_PREFIXES):
            groups["conditioning decoder"] += 1
        else:
            assert key.startswith("first_stage_model.encoder.")
            groups["first-stage encoder"] += 1
    # open_clip text leftovers; AutoencoderKLModeOnly decoder (138) + post_quant_conv (2); encoder (106)
    assert groups == {"text": 6, "conditioning decoder": 140, "first-stage encoder": 106}
    numel = sum(math.prod(KEYS["keys"][k]) for k in plan.unused)
    assert numel == 51_723_265 + 49_490_199 + 34_163_592


def test_image_decoder_file_converts_key_exactly(module_shapes):
    state = _image_decoder_file()
    plan = plan_svd_single_file(state)
    assert plan.layout.decoder == "image"
    converted = convert_svd_single_file(state)
    assert {part: _shapes(tensors) for part, tensors in converted.items()} == module_shapes
    generated = [t for rule in plan.rules if not rule.sources for t in rule.targets]
    # 14 decoder resnets x (8 temporal-resnet tensors + 1 blend factor) + the temporal output conv (2)
    assert len(generated) == 14 * 9 + 2 and all(t.startswith("decoder.") for t in generated)
    assert all(".temporal_res_block." in t or "time_mixer" in t or "time_conv_out" in t for t in generated)


def test_comfyui_saved_file_converts_key_exactly(module_shapes):
    state = _comfyui_saved_file(module_shapes)
    plan = plan_svd_single_file(state)
    assert tuple(plan.layout) == ("temporal", "first_stage", "transformers")
    assert sorted(plan.unused) == ["edm_vpred.sigma_max", "edm_vpred.sigma_min"]
    converted = convert_svd_single_file(state)
    assert {part: _shapes(tensors) for part, tensors in converted.items()} == module_shapes


def test_neutral_temporal_layers_pass_frames_through():
    """The image-decoder file's generated tensors: zero temporal convolutions, unit norms, a blend weight
    whose sigmoid is exactly 0, and an identity temporal output convolution."""
    state = {k: (torch.zeros(v, dtype=torch.float16) if k.startswith(DECODER) else torch.empty(v, device="meta"))
             for k, v in {**{k: v for k, v in KEYS["keys"].items() if not k.startswith(DECODER)},
                          **KEYS["image_decoder_keys"]}.items()}
    vae = convert_svd_single_file(state)["vae"]
    mix = vae["decoder.mid_block.resnets.0.time_mixer.mix_factor"]
    assert mix.dtype == torch.float16 and torch.sigmoid(mix).item() == 0.0
    assert torch.count_nonzero(vae["decoder.up_blocks.2.resnets.1.temporal_res_block.conv2.weight"]) == 0
    assert torch.equal(vae["decoder.mid_block.resnets.1.temporal_res_block.norm1.weight"], torch.ones(512).half())
    time_conv = vae["decoder.time_conv_out.weight"]
    clip = torch.randn(1, 3, 5, 4, 4).half()
    out = F.conv3d(clip, time_conv, vae["decoder.time_conv_out.bias"], padding=(1, 0, 0))
    assert torch.equal(out, clip)


# ------------------------------------------------------------------------------------------- CLIP math
TINY = dict(width=32, layers=2, heads=2, patch=8, image=32, output=24)


def _open_clip_tiny(generator) -> dict:
    """Random open_clip visual-tower weights (tiny), by open_clip's names."""
    width, grid = TINY["width"], TINY["image"] // TINY["patch"]
    shapes = {"class_embedding": (width,), "conv1.weight": (width, 3, TINY["patch"], TINY["patch"]),
              "positional_embedding": (grid * grid + 1, width), "ln_pre.weight": (width,), "ln_pre.bias": (width,),
              "ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, TINY["output"])}
    for i in range(TINY["layers"]):
        block = f"transformer.resblocks.{i}."
        shapes.update({block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                       block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                       block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                       block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
                       block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
                       block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,)})
    weights = {}
    for name, shape in shapes.items():
        scale = 1 / math.sqrt(shape[-1]) if len(shape) > 1 else 0.3
        weights[name] = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
        if name.endswith("weight") and len(shape) == 1:
            weights[name] += 1
    return weights


def _open_clip_embedding(w: dict, pixels: torch.Tensor) -> torch.Tensor:
    """open_clip's VisionTransformer.forward written out: fused q/k/v projection, pre-norm residual blocks,
    class-token pooling, then `pooled @ proj`."""
    width, heads = TINY["width"], TINY["heads"]
    x = F.conv2d(pixels, w["conv1.weight"], stride=TINY["patch"]).flatten(2).transpose(1, 2)
    x = torch.cat([w["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + w["positional_embedding"]
    x = F.layer_norm(x, (width,), w["ln_pre.weight"], w["ln_pre.bias"], 1e-5)
    for i in range(TINY["layers"]):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], 1e-5)
        q, k, v = (h @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]).split(width, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, width // heads)).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(width // heads)
        h = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
        x = x + h @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], 1e-5)
        h = F.gelu(h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"])
        x = x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    pooled = F.layer_norm(x[:, 0], (width,), w["ln_post.weight"], w["ln_post.bias"], 1e-5)
    return pooled @ w["proj"]


def test_clip_conversion_reproduces_open_clip_embedding():
    generator = torch.Generator().manual_seed(0)
    weights = _open_clip_tiny(generator)
    state = {k: v for k, v in _meta(KEYS["keys"]).items() if not k.startswith(VISUAL)}
    state.update({VISUAL + k: v for k, v in weights.items()})
    converted = convert_svd_single_file(state)["image_encoder"]
    config = CLIPVisionConfig(hidden_size=TINY["width"], intermediate_size=4 * TINY["width"],
                              num_attention_heads=TINY["heads"], num_hidden_layers=TINY["layers"],
                              patch_size=TINY["patch"], image_size=TINY["image"], projection_dim=TINY["output"],
                              hidden_act="gelu", layer_norm_eps=1e-5)
    model = torch.nn.Module.to(CLIPVisionModelWithProjection(config), torch.float64).eval()
    model.load_state_dict(converted, strict=True)
    pixels = torch.randn(2, 3, TINY["image"], TINY["image"], generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ours = model(pixels).image_embeds
    expected = _open_clip_embedding(weights, pixels)
    assert float((ours - expected).abs().max() / expected.abs().max()) < 1e-12


# ---------------------------------------------------------------------------------------------- errors
def _fails(state, *needles):
    with pytest.raises(MarionetteError) as error:
        plan_svd_single_file(state)
    text = str(error.value)
    for needle in needles:
        assert needle in text, text
    return text


def test_files_that_are_not_svd_single_files_are_named():
    where = ("svd_xt.safetensors", "models/checkpoints")
    _fails({"conv_in.weight": torch.empty(1), "down_blocks.0.resnets.0.conv1.weight": torch.empty(1)},
           "not a single-file SVD checkpoint", "diffusers-format UNet", *where)
    _fails({"foo.bar": torch.empty(1)}, "foo.* (1)", *where)
    image_model = {"model.diffusion_model.input_blocks.0.0.weight": torch.empty(1),
                   "first_stage_model.decoder.conv_out.weight": torch.empty(1)}
    _fails(image_model, "image checkpoint", "not SVD", *where)


def test_incomplete_and_modified_svd_files_are_refused():
    full = _meta(KEYS["keys"])
    _fails({k: v for k, v in full.items() if not k.startswith(VISUAL)}, "no CLIP image encoder")
    _fails({k: v for k, v in full.items() if not k.startswith(DECODER)}, "no VAE decoder")
    no_encoder = {k: v for k, v in full.items() if not k.startswith(("first_stage_model.encoder.",
                                                                     "conditioner.embedders.3.encoder.encoder."))}
    _fails(no_encoder, "no VAE encoder")
    _fails({**full, "model_ema.decay": torch.empty(())}, "1 tensors that an SVD single file does not have",
           "model_ema.decay")
    bad = dict(full)
    bad[VISUAL + "transformer.resblocks.3.attn.in_proj_weight"] = torch.empty(1000, 1280, device="meta")
    with pytest.raises(MarionetteError, match="resblocks.3.attn.in_proj_weight has shape"):
        convert_svd_single_file(bad)


def test_loader_refuses_bad_paths_and_arguments(tmp_path):
    with pytest.raises(MarionetteError, match="not found"):
        load_svd_single_file(tmp_path / "svd_xt.safetensors")
    truncated = tmp_path / "svd_xt.safetensors"
    truncated.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": {\"dtype\": \"F32\", \"shape\": [4]")
    with pytest.raises(MarionetteError, match="truncated"):
        load_svd_single_file(truncated)
    other = tmp_path / "svd_xt.gguf"
    other.write_bytes(b"0")
    with pytest.raises(MarionetteError, match="unsupported checkpoint type"):
        load_svd_single_file(other)
    with pytest.raises(MarionetteError, match="dtype"):
        load_svd_single_file(truncated, dtype=torch.int8)
    with pytest.raises(MarionetteError, match="Unknown UNet variant"):
        load_svd_single_file(truncated, unet_variant="animatediff")


def test_loader_names_a_non_svd_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(MarionetteError, match="model.safetensors is a single-file image checkpoint"):
        load_svd_single_file(path)
