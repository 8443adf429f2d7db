"""Single-file SVD checkpoints against the real ComfyUI (0.3.75) code that loads them (host tier).

- The committed key list `tests/data/keys/svd_xt_single_file.json` is what ComfyUI's own modules, built at
  full size on the meta device, hold under the prefixes its loader reads (and ComfyUI detects that key set as
  `SVD_img2vid`); the open_clip names of the CLIP tower are the inverse of ComfyUI's open_clip->transformers
  conversion, checked by running that conversion. Regenerate with `python tests/test_host_svd_single_file.py`.
- Numerical parity: tiny ComfyUI VideoUNet, temporal VideoDecoder, frame-wise Decoder and encoders with random
  weights, converted by our converter into the diffusers modules, give the same outputs.
- The whole loader on a tiny single file written from those ComfyUI modules.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import comfy_model_code  # noqa: E402

KEYS_JSON = Path(__file__).resolve().parent / "data" / "keys" / "svd_xt_single_file.json"
UNET, FIRST_STAGE = "model.diffusion_model.", "first_stage_model."
VISUAL = "conditioner.embedders.0.open_clip.model.visual."
OPEN_CLIP, COND_AE = "conditioner.embedders.0.open_clip.model.", "conditioner.embedders.3.encoder."


def _import_comfy():
    """ComfyUI's model code, without starting anything (CPU, no argument parsing)."""
    comfy_model_code()
    import comfy.clip_vision
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.models import autoencoder
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return {"clip_vision": comfy.clip_vision, "detection": comfy.model_detection, "ops": comfy.ops,
            "autoencoder": autoencoder, "UNetModel": UNetModel}


# ----------------------------------------------------------------------------- ComfyUI's modules
def video_unet_kwargs(channels=320, mult=(1, 2, 4, 4), res_blocks=2, context=1024, adm=768, head_channels=64):
    """The VideoUNet arguments ComfyUI's detection derives for an SVD file (plus SVD_img2vid's extras)."""
    levels = len(mult)
    attention = [1] * (levels - 1) + [0]  # SVD: attention on every level but the deepest
    return {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
            "num_classes": "sequential", "adm_in_channels": adm, "in_channels": 8, "out_channels": 4,
            "model_channels": channels, "num_res_blocks": [res_blocks] * levels,
            "transformer_depth": [a for a in attention for _ in range(res_blocks)],
            "transformer_depth_output": [a for a in attention for _ in range(res_blocks + 1)],  # popped from the end
            "channel_mult": list(mult), "transformer_depth_middle": 1, "use_linear_in_transformer": True,
            "context_dim": context, "extra_ff_mix_layer": True, "use_spatial_context": True,
            "merge_strategy": "learned_with_images", "merge_factor": 0.0, "video_kernel_size": [3, 1, 1],
            "use_temporal_resblock": True, "use_temporal_attention": True, "disable_temporal_crossattention": False,
            "num_heads": -1, "num_head_channels": head_channels}


def vae_ddconfig(ch=128, mult=(1, 2, 4, 4), res_blocks=2):
    """The encoder/decoder config ComfyUI's VAE uses for SVD (comfy/sd.py, `decoder.mid.block_1.mix_factor`)."""
    return {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": ch,
            "ch_mult": list(mult), "num_res_blocks": res_blocks, "attn_resolutions": [], "dropout": 0.0}


def comfy_modules(comfy, unet_kwargs, ddconfig):
    """ComfyUI's VideoUNet, temporal and frame-wise first-stage autoencoders and the conditioning
    autoencoder (SGM's AutoencoderKLModeOnly = ComfyUI's AutoencodingEngineLegacy), uninitialised."""
    ae = comfy["autoencoder"]
    regularizer = {"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"}
    encoder = {"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig}
    video = dict(ddconfig, video_kernel_size=[3, 1, 1], alpha=0.0)
    return {
        "unet": comfy["UNetModel"](**unet_kwargs, operations=comfy["ops"].disable_weight_init),
        "first_stage": ae.AutoencodingEngine(
            regularizer_config=regularizer, encoder_config=encoder,
            decoder_config={"target": "comfy.ldm.modules.temporal_ae.VideoDecoder", "params": video}),
        "first_stage_image": ae.AutoencodingEngine(
            regularizer_config=regularizer, encoder_config=encoder,
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig}),
        "conditioner_ae": ae.AutoencodingEngineLegacy(4, regularizer_config=regularizer, ddconfig=ddconfig)}


def open_clip_visual_names(transformers_sd: dict) -> dict:
    """open_clip names + shapes of a CLIP vision tower given in transformers naming: the inverse of ComfyUI's
    `clip_vision.convert_to_transformers` (q/k/v stacked into in_proj, proj = projection transposed)."""
    top = {"vision_model.embeddings.class_embedding": "class_embedding",
           "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
           "vision_model.embeddings.position_embedding.weight": "positional_embedding",
           "vision_model.pre_layrnorm.weight": "ln_pre.weight", "vision_model.pre_layrnorm.bias": "ln_pre.bias",
           "vision_model.post_layernorm.weight": "ln_post.weight",
           "vision_model.post_layernorm.bias": "ln_post.bias"}
    layer_parts = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    out = {}
    for key, shape in transformers_sd.items():
        shape = list(shape)
        if key in top:
            out[top[key]] = shape
        elif key == "visual_projection.weight":
            out["proj"] = shape[::-1]
        else:
            layer, rest = key[len("vision_model.encoder.layers."):].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            if module in layer_parts:
                out[f"transformer.resblocks.{layer}.{layer_parts[module]}.{kind}"] = shape
            elif module == "self_attn.q_proj":  # k and v are stacked behind q
                out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = [3 * shape[0]] + shape[1:]
    return out


def single_file_layout() -> dict:
    """The key -> shape layout of svd_xt.safetensors and of the *_image_decoder files' decoder, from
    ComfyUI's modules at full size on the meta device."""
    host = _import_comfy()
    from comfy.clip_model import CLIPVisionModelProjection
    clip_config = os.path.join(os.path.dirname(host["clip_vision"].__file__), "clip_vision_config_h.json")
    with open(clip_config, encoding="utf-8") as handle:
        clip_config = json.load(handle)
    with torch.device("meta"):
        modules = comfy_modules(host, video_unet_kwargs(), vae_ddconfig())
        clip = CLIPVisionModelProjection(clip_config, torch.float32, "meta", host["ops"].disable_weight_init)

    def shapes(module, prefix, keep=lambda k: True):
        return {prefix + k: list(v.shape) for k, v in module.state_dict().items() if keep(k)}

    keys = shapes(modules["unet"], UNET)
    keys.update(shapes(modules["first_stage"], FIRST_STAGE))
    clip_sd = {k: list(v.shape) for k, v in clip.state_dict().items()}
    keys.update({VISUAL + k: v for k, v in open_clip_visual_names(clip_sd).items()})
    text = _sd2_text_dims(host)  # open_clip ViT-H/14 text leftovers: SGM deletes only the text transformer
    keys.update({OPEN_CLIP + "positional_embedding": [text["max_position_embeddings"], text["hidden_size"]],
                 OPEN_CLIP + "text_projection": [text["hidden_size"], text["projection_dim"]],
                 OPEN_CLIP + "logit_scale": [],
                 OPEN_CLIP + "token_embedding.weight": [text["vocab_size"], text["hidden_size"]],
                 OPEN_CLIP + "ln_final.weight": [text["hidden_size"]],
                 OPEN_CLIP + "ln_final.bias": [text["hidden_size"]]})
    keys.update(shapes(modules["conditioner_ae"], COND_AE))
    image_decoder = shapes(modules["first_stage_image"], FIRST_STAGE, lambda k: k.startswith("decoder."))
    return {"keys": keys, "image_decoder_keys": image_decoder}


def _sd2_text_dims(host) -> dict:
    path = os.path.join(os.path.dirname(host["clip_vision"].__file__), "text_encoders", "sd2_clip_config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    return {"max_position_embeddings": config["max_position_embeddings"], "hidden_size": config["hidden_size"],
            "projection_dim": config.get("projection_dim", config["hidden_size"]), "vocab_size": config["vocab_size"]}


def write_layout_json(path: Path = KEYS_JSON) -> None:
    layout = single_file_layout()
    numel = sum(_numel(s) for s in layout["keys"].values())
    decoder = FIRST_STAGE + "decoder."
    image_numel = numel + sum(_numel(s) for s in layout["image_decoder_keys"].values()) - sum(
        _numel(s) for k, s in layout["keys"].items() if k.startswith(decoder))
    document = {
        "source": "ComfyUI 0.3.75 modules on the meta device, with the prefixes its checkpoint loader reads: "
                  "UNetModel with the VideoUNet arguments of model_detection for SVD (+ SVD_img2vid extras) under "
                  "model.diffusion_model.; AutoencodingEngine(Encoder, temporal_ae.VideoDecoder) under "
                  "first_stage_model.; CLIP ViT-H/14 (clip_vision_config_h.json) renamed to open_clip by inverting "
                  "clip_vision.convert_to_transformers, under conditioner.embedders.0.open_clip.model.visual.; "
                  "open_clip text leftovers (sd2_clip_config.json sizes); AutoencodingEngineLegacy(embed_dim 4) "
                  "under conditioner.embedders.3.encoder. (SGM configs/inference/svd.yaml).",
        "files": "svd_xt.safetensors, svd_xt_1_1.safetensors, svd.safetensors: `keys`; svd_xt_image_decoder / "
                 "svd_image_decoder: `keys` with first_stage_model.decoder.* replaced by `image_decoder_keys`.",
        "count": len(layout["keys"]),
        "numel": numel,
        "size_check": {
            "tensor_bytes_fp32": 4 * numel, "published_svd_xt": "9.56 GB (svd_xt.safetensors, fp32)",
            "tensor_bytes_fp16": 2 * numel, "published_svd_xt_1_1": "4.78 GB (svd_xt_1_1.safetensors, fp16)",
            "image_decoder_tensor_bytes_fp32": 4 * image_numel,
            "published_svd_xt_image_decoder": "9.5 GB (svd_xt_image_decoder.safetensors, fp32)"},
        "keys": layout["keys"],
        "image_decoder_count": len(layout["image_decoder_keys"]),
        "image_decoder_keys": layout["image_decoder_keys"],
    }
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n



# ------------------------------------------------------------------------------------ tiny fixture
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "patch_size": 8, "image_size": 32, "projection_dim": 24, "num_channels": 3, "hidden_act": "gelu",
             "layer_norm_eps": 1e-5}
# two resnets per level: diffusers' temporal decoder only has its middle attention with layers_per_block >= 2
TINY_VAE = {"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2, "layers_per_block": 2,
            "latent_channels": 4, "in_channels": 3, "out_channels": 3, "scaling_factor": 0.18215}
FRAMES, LATENT = 3, 8
F64 = torch.float64  # parity runs in double precision, so that any mapping error stands far above rounding
EXACT = 1e-12


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """ComfyUI's modules skip initialisation; give every tensor a well-scaled random value (norm scales
    near 1, blend factors of both signs) so that every path shows in the outputs."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.ndim >= 2:
                fan_in = tensor[0].numel()
                value = torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5
            elif name.endswith("mix_factor"):
                value = torch.randn(tensor.shape, generator=generator)
            elif name.endswith("weight"):
                value = 1 + 0.2 * torch.randn(tensor.shape, generator=generator)
            else:
                value = 0.2 * torch.randn(tensor.shape, generator=generator)
            tensor.copy_(value)
    return module.to(F64).eval()


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


def build_tiny() -> dict:
    """Tiny random ComfyUI modules (float64) and the single-file state dict they make (SGM names, open_clip
    CLIP tower, text leftovers)."""
    host = _import_comfy()
    from comfy.clip_model import CLIPVisionModelProjection
    generator = torch.Generator().manual_seed(0)
    with torch.device("cpu"):
        modules = comfy_modules(host, video_unet_kwargs(32, (1, 2), 1, context=24, adm=24, head_channels=16),
                                vae_ddconfig(32, (1, 2), 2))
        modules["clip"] = CLIPVisionModelProjection(dict(TINY_CLIP, model_type="clip_vision_model"), torch.float32,
                                                    "cpu", host["ops"].disable_weight_init)
    modules = {name: _randomise(module, generator) for name, module in modules.items()}
    clip_names = open_clip_visual_names({k: v.shape for k, v in modules["clip"].state_dict().items()})
    state = {UNET + k: v for k, v in modules["unet"].state_dict().items()}
    state.update({FIRST_STAGE + k: v for k, v in modules["first_stage"].state_dict().items()})
    state.update({COND_AE + k: v for k, v in modules["conditioner_ae"].state_dict().items()})
    state.update({VISUAL + name: 0.3 * torch.randn(shape, generator=generator, dtype=F64)
                  for name, shape in clip_names.items()})
    state.update({OPEN_CLIP + name: torch.randn(shape, generator=generator, dtype=F64) for name, shape in (
        ("positional_embedding", (5, 16)), ("text_projection", (16, 16)), ("logit_scale", ()),
        ("token_embedding.weight", (7, 16)), ("ln_final.weight", (16,)), ("ln_final.bias", (16,)))})
    clip = host["clip_vision"].convert_to_transformers(dict(state), VISUAL)  # ComfyUI's own CLIP conversion
    modules["clip"].load_state_dict({k: v for k, v in clip.items() if k.startswith(("vision_model.", "visual_"))})
    return {"host": host, "modules": modules, "state": state}


def _configs():
    from marionette.models.svd.configs import tiny_unet_config
    from marionette.models.svd.single_file_keys import SingleFileConfigs
    return SingleFileConfigs(tiny_unet_config(), dict(TINY_VAE), dict(TINY_CLIP))


def _diffusers_modules(converted: dict, sgm_norm_eps: bool = False) -> dict:
    """Our modules (float64) holding the converted tensors. `sgm_norm_eps`: give the UNet's resnet norms the
    eps of SGM's (1e-5); diffusers' SVD UNet uses 1e-6 in some of them, a ~1e-5 relative difference in the
    output that the official diffusers weights carry as well."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from marionette.models.svd.unet import build_unet
    configs = _configs()
    modules = {"unet": build_unet(configs.unet),
               "vae": AutoencoderKLTemporalDecoder.from_config(configs.vae),
               "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.image_encoder))}
    for part, module in modules.items():
        torch.nn.Module.to(module, F64).eval()
        module.load_state_dict(converted[part], strict=True)
    if sgm_norm_eps:
        for name, module in modules["unet"].named_modules():
            if isinstance(module, torch.nn.GroupNorm) and "res_block" in name:
                module.eps = 1e-5
    return modules


def _unet_inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, FRAMES, 8, LATENT, LATENT, generator=generator, dtype=F64)
    context = torch.randn(1, 1, 24, generator=generator, dtype=F64)
    return sample, torch.tensor(0.7, dtype=F64), context, torch.tensor([[6.0, 127.0, 0.02]], dtype=F64)


def _comfy_unet(tiny, sample, timestep, context, ids) -> torch.Tensor:
    """ComfyUI's call: frames on the batch axis, per-frame timestep, context and micro-conditioning
    embedded with its Timestep(dim) as model_base.SVD_img2vid.encode_adm does."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep
    embed = Timestep(8)
    y = torch.cat([embed(ids[0, i:i + 1]) for i in range(3)], dim=1).flatten(1).to(sample.dtype)
    frames = sample.shape[1]
    out = tiny["modules"]["unet"](sample[0], timesteps=timestep.repeat(frames), context=context.repeat(frames, 1, 1),
                                  y=y.repeat(frames, 1), num_video_frames=frames,
                                  image_only_indicator=torch.zeros(1, frames, dtype=sample.dtype))
    return out[None]


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference value."""
    assert a.shape == b.shape
    return float((a - b).abs().max() / b.abs().max())


def _random(seed: int, *shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------------------- tests
def test_committed_key_list_is_comfyui_layout():
    layout = single_file_layout()
    committed = json.loads(KEYS_JSON.read_text(encoding="utf-8"))
    assert committed["keys"] == layout["keys"]
    assert committed["image_decoder_keys"] == layout["image_decoder_keys"]
    assert committed["count"] == len(layout["keys"]) == 2446


def test_comfyui_loader_reads_the_key_list_as_svd():
    host = _import_comfy()
    keys = json.loads(KEYS_JSON.read_text(encoding="utf-8"))["keys"]
    meta = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    detected = host["detection"].detect_unet_config(meta, UNET)
    expected = video_unet_kwargs()
    assert {k: expected[k] for k in detected} == detected
    assert type(host["detection"].model_config_from_unet(meta, UNET)).__name__ == "SVD_img2vid"
    clip = host["clip_vision"].convert_to_transformers(dict(meta), VISUAL)
    tower = {k: tuple(v.shape) for k, v in clip.items() if k.startswith(("vision_model.", "visual_projection."))}
    from comfy.clip_model import CLIPVisionModelProjection
    config = os.path.join(os.path.dirname(host["clip_vision"].__file__), "clip_vision_config_h.json")
    with open(config, encoding="utf-8") as handle, torch.device("meta"):
        model = CLIPVisionModelProjection(json.load(handle), torch.float32, "meta", host["ops"].disable_weight_init)
    assert tower == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_clip_conversion_and_embedding_match_comfyui(tiny):
    from marionette.models.svd.single_file import convert_svd_single_file
    ours = convert_svd_single_file(tiny["state"])["image_encoder"]
    theirs = tiny["modules"]["clip"].state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    pixels = _random(1, 2, 3, 32, 32)
    encoder = _diffusers_modules(convert_svd_single_file(tiny["state"]))["image_encoder"]
    with torch.no_grad():
        error = _max_error(encoder(pixels).image_embeds, tiny["modules"]["clip"](pixels)[2])
    assert error < EXACT, error


def test_unet_matches_comfyui_video_unet(tiny):
    from marionette.models.svd.single_file import convert_svd_single_file
    converted = convert_svd_single_file(tiny["state"])
    inputs = _unet_inputs(2)
    with torch.no_grad():
        theirs = _comfy_unet(tiny, *inputs)
        aligned = _diffusers_modules(converted, sgm_norm_eps=True)["unet"](*inputs).sample
        as_diffusers = _diffusers_modules(converted)["unet"](*inputs).sample
    assert theirs.abs().mean() > 0.1  # not a comparison of two near-zero tensors
    assert _max_error(aligned, theirs) < EXACT
    assert _max_error(as_diffusers, theirs) < 1e-4  # only the norm eps differs


def test_temporal_vae_matches_comfyui(tiny):
    from marionette.models.svd.single_file import convert_svd_single_file
    vae = _diffusers_modules(convert_svd_single_file(tiny["state"]))["vae"]
    latents, images = _random(3, FRAMES, 4, LATENT, LATENT), _random(4, 2, 3, 4 * LATENT, 4 * LATENT)
    with torch.no_grad():
        decoded = vae.decode(latents, num_frames=FRAMES).sample
        expected = tiny["modules"]["first_stage"].decode(latents)  # ComfyUI decodes the batch as one video
        encoded = vae.encode(images).latent_dist.mode()
        expected_latent = tiny["modules"]["conditioner_ae"].encode(images)  # encoder, quant_conv, mode
    assert _max_error(decoded, expected) < EXACT
    assert _max_error(encoded, expected_latent) < EXACT


def test_image_decoder_file_decodes_frame_by_frame_as_comfyui(tiny):
    from marionette.models.svd.single_file import convert_svd_single_file, plan_svd_single_file
    state = {k: v for k, v in tiny["state"].items() if not k.startswith(FIRST_STAGE + "decoder.")}
    image_decoder = tiny["modules"]["first_stage_image"].decoder
    state.update({FIRST_STAGE + "decoder." + k: v for k, v in image_decoder.state_dict().items()})
    assert plan_svd_single_file(state).layout.decoder == "image"
    vae = _diffusers_modules(convert_svd_single_file(state))["vae"]
    latents = _random(5, FRAMES, 4, LATENT, LATENT)
    with torch.no_grad():
        decoded = vae.decode(latents, num_frames=FRAMES).sample
        expected = tiny["modules"]["first_stage_image"].decode(latents)
    assert _max_error(decoded, expected) < EXACT


def test_comfyui_saved_layout_encodes_as_comfyui(tiny):
    """ImageOnlyCheckpointSave: no conditioning autoencoder, CLIP in transformers naming, sampling extras."""
    from marionette.models.svd.single_file import convert_svd_single_file, plan_svd_single_file
    state = {k: v for k, v in tiny["state"].items() if not k.startswith("conditioner.")}
    state.update({VISUAL + k: v for k, v in tiny["modules"]["clip"].state_dict().items()})
    state.update({"edm_vpred.sigma_max": torch.tensor(700.0), "edm_vpred.sigma_min": torch.tensor(0.002)})
    layout = plan_svd_single_file(state).layout
    assert (layout.encoder, layout.clip) == ("first_stage", "transformers")
    converted = convert_svd_single_file(state)
    reference = convert_svd_single_file(tiny["state"])
    for part in ("unet", "image_encoder"):
        assert all(torch.equal(converted[part][k], v) for k, v in reference[part].items())
    vae = _diffusers_modules(converted)["vae"]
    images = _random(6, 2, 3, 4 * LATENT, 4 * LATENT)
    with torch.no_grad():
        error = _max_error(vae.encode(images).latent_dist.mode(), tiny["modules"]["first_stage"].encode(images))
    assert error < EXACT


def test_loader_gives_the_converted_weights(tiny, tmp_path):
    from safetensors.torch import save_file

    from marionette.models.svd.single_file import convert_svd_single_file, load_svd_single_file
    path = tmp_path / "svd_xt_tiny.safetensors"
    state = {k: v.float().contiguous() for k, v in tiny["state"].items()}  # as released: float32
    save_file(state, str(path))
    converted = convert_svd_single_file(state)
    base = load_svd_single_file(path, dtype=torch.float32, configs=_configs())
    assert base.unet_loaded and base.folder == str(path) and set(base.files) == {"unet", "vae", "image_encoder"}
    for part in ("unet", "vae", "image_encoder"):
        loaded = getattr(base, part).state_dict()
        assert set(loaded) == set(converted[part]), part
        assert all(torch.equal(loaded[k], v) for k, v in converted[part].items()), part
    half = load_svd_single_file(path, dtype=torch.float16, unet_variant="mimicmotion", configs=_configs())
    assert not half.unet_loaded and "unet" not in half.files
    assert half.unet is None  # never read; the paper weights replace it (load_animation_unet)
    for part in ("vae", "image_encoder"):
        loaded = getattr(half, part).state_dict()
        assert all(torch.equal(loaded[k], v.half()) for k, v in converted[part].items()), part



def test_loader_reads_only_what_the_variant_needs(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from marionette.models.svd import single_file
    from marionette.models.core.checkpoints import SafetensorsTensors
    path = tmp_path / "svd_xt_tiny.safetensors"
    save_file({k: v.float().contiguous() for k, v in tiny["state"].items()}, str(path))
    read = []
    original = SafetensorsTensors.get
    monkeypatch.setattr(SafetensorsTensors, "get",
                        lambda self, name: read.append(name) or original(self, name))
    single_file.load_svd_single_file(path, dtype=torch.bfloat16, unet_variant="stableanimator", configs=_configs())
    assert read and not any(name.startswith(UNET) for name in read)
    assert len(read) == len(set(read))  # each tensor read once
    read.clear()
    single_file.load_svd_single_file(path, dtype=torch.float32, configs=_configs())
    plan = single_file.plan_svd_single_file(tiny["state"])
    assert sorted(read) == sorted(s for rule in plan.rules for s in rule.sources)  # unused tensors never read


def test_loader_names_a_missing_tensor(tiny, tmp_path):
    from safetensors.torch import save_file

    from marionette.models.errors import MarionetteError
    from marionette.models.svd.single_file import load_svd_single_file
    path = tmp_path / "svd_xt_pruned.safetensors"
    missing = UNET + "output_blocks.1.1.conv.weight"  # the first up level's upsampler
    save_file({k: v.float().contiguous() for k, v in tiny["state"].items() if k != missing}, str(path))
    with pytest.raises(MarionetteError, match=r"does not fit the SVD UNet .*up_blocks\.0\.upsamplers\.0\.conv\.weight"):
        load_svd_single_file(path, dtype=torch.float32, configs=_configs())


if __name__ == "__main__":
    write_layout_json()
