"""CLIP image conditioning of the SD1.5 ReferenceNet family: the sd-image-variations encoder from a
diffusers folder or a ComfyUI clip_vision single file (transformers or OpenAI naming, converted exactly as
ComfyUI 0.3.75's clip_vision.convert_to_transformers), the 224-px squash + OpenAI normalisation against
transformers' CLIPImageProcessor, and wrong towers refused."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import comfy_model_code
from marionette.models.core.modules import finish
from marionette.models.core.seeding import seeded
from marionette.models.errors import MarionetteError
from marionette.models.sd15.clip_image import encode_reference, load_image_encoder

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16, image_size=28,
            patch_size=14, projection_dim=12)


def tiny_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    with seeded(0):
        return finish(CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY)))


def to_openai(state: dict) -> dict:
    """transformers names -> OpenAI CLIP's `visual.*` names (the layout of open_clip / OpenAI checkpoints)."""
    out = {"visual.class_embedding": state["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": state["vision_model.pre_layrnorm.weight"],
           "visual.ln_pre.bias": state["vision_model.pre_layrnorm.bias"],
           "visual.ln_post.weight": state["vision_model.post_layernorm.weight"],
           "visual.ln_post.bias": state["vision_model.post_layernorm.bias"],
           "visual.proj": state["visual_projection.weight"].t().contiguous()}
    for i in range(TINY["num_hidden_layers"]):
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([state[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                                 ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj")):
                out[f"{dst}{theirs}.{kind}"] = state[f"{src}{ours}.{kind}"]
    return out


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_diffusers_folder_and_its_parent(tmp_path):
    encoder = tiny_encoder()
    folder = tmp_path / "sd-image-variations-diffusers" / "image_encoder"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**TINY, "_name_or_path": "x", "model_type": "clip_vision_model"}))
    torch.save(encoder.state_dict(), folder / "pytorch_model.bin")
    for path in (folder, folder.parent):
        loaded = load_image_encoder(path, torch.float32, require_vit_l14=False)
        assert same_weights(loaded, encoder)
    with pytest.raises(MarionetteError, match="not the ViT-L/14.*hidden_size=32"):
        load_image_encoder(folder, torch.float32)


@pytest.mark.parametrize("naming", ["transformers", "openai", "full_clip"])
def test_single_clip_vision_files(tmp_path, naming):
    encoder = tiny_encoder()
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    if naming == "openai":
        state = to_openai(state)
    elif naming == "full_clip":  # a whole CLIP model: the text tower is ignored, as ComfyUI does
        state = {**state, "text_model.embeddings.token_embedding.weight": torch.zeros(10, 8),
                 "text_projection.weight": torch.zeros(12, 8), "logit_scale": torch.zeros(())}
    path = tmp_path / "clip_vision_sd_image_variations.safetensors"
    save_file(state, str(path))
    loaded = load_image_encoder(path, torch.float32, require_vit_l14=False)
    assert same_weights(loaded, encoder)
    with pytest.raises(MarionetteError, match="not the ViT-L/14"):
        load_image_encoder(path, torch.float32)


def test_openai_conversion_equals_comfyuis():
    comfy_model_code()
    from comfy.clip_vision import convert_to_transformers
    from marionette.models.sd15.clip_image import _transformers_keys
    state = {k: v.contiguous() for k, v in tiny_encoder().state_dict().items()}
    openai = to_openai(state)
    theirs = convert_to_transformers(dict(openai), "visual.")
    ours = _transformers_keys(openai, "file")
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_not_a_clip_file_is_refused(tmp_path):
    path = tmp_path / "image_encoder.safetensors"
    save_file({"conv_in.weight": torch.zeros(2)}, str(path))
    with pytest.raises(MarionetteError, match="not a CLIP vision encoder"):
        load_image_encoder(path)


def test_reference_token_matches_transformers_preprocessing():
    """The official path: PIL image squashed to the encoder size, CLIPImageProcessor (OpenAI mean/std) ->
    image_embeds.unsqueeze(1); for an 8-bit image already at that size both give the same pixels."""
    from transformers import CLIPImageProcessor
    encoder = tiny_encoder()
    size = TINY["image_size"]
    pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    official = processor(images=[Image.fromarray(p) for p in pixels], return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = encoder(pixel_values=official).image_embeds.unsqueeze(1)
        ours = encode_reference(encoder, torch.from_numpy(pixels).float() / 255)
    assert ours.shape == (2, 1, TINY["projection_dim"])
    assert torch.allclose(ours, expected, atol=1e-5)
    squashed = encode_reference(encoder, torch.rand(1, 96, 64, 3))  # any size and aspect: squashed, not cropped
    assert squashed.shape == (1, 1, TINY["projection_dim"])
