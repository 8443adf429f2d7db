"""SVD-xt base loading from a diffusers folder, animation UNet installation, and the reference conditioning.

Everything runs on tiny random modules saved with `save_pretrained` into a temporary diffusers-style folder.
The CLIP preprocessing is checked against diffusers' own `_resize_with_antialiasing` and transformers'
`CLIPImageProcessor` (the official code path); latents and decoding against direct VAE calls.
"""
import copy
import json
import os
import shutil

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from marionette.models.errors import MarionetteError
from marionette.models.pipelines.svd_models import install_animation_weights, load_animation_unet
from marionette.models.pipelines import svd_models
from marionette.models.svd.base import load_svd_base
from marionette.models.svd.conditioning import (CLIP_MEAN, CLIP_STD, clip_image_embedding, clip_pixel_values,
                                                decode_latents, reference_latent)
from marionette.models.svd.configs import tiny_unet_config
from marionette.models.mimicmotion.pose_net import PoseNet
from marionette.models.stableanimator.unet import build_stableanimator_unet
from marionette.models.svd.unet import build_unet

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=224, patch_size=32, projection_dim=24)  # projection = tiny UNet context width
TINY_VAE = dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def originals():
    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(**tiny_unet_config())
    vae = AutoencoderKLTemporalDecoder(**TINY_VAE)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP))
    return {"unet": unet, "vae": vae, "image_encoder": clip}


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory, originals):
    """unet: fp32 and .fp16 files; vae: .fp16 only; image_encoder: fp32 only (as mixes users have)."""
    folder = tmp_path_factory.mktemp("svd") / "stable-video-diffusion-img2vid-xt"
    originals["unet"].save_pretrained(folder / "unet")
    copy.deepcopy(originals["unet"]).half().save_pretrained(folder / "unet", variant="fp16")
    copy.deepcopy(originals["vae"]).half().save_pretrained(folder / "vae", variant="fp16")
    originals["image_encoder"].save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(do_center_crop=True, crop_size=224, size={"shortest_edge": 224}).save_pretrained(
        folder / "feature_extractor")
    EulerDiscreteScheduler().save_config(folder / "scheduler")
    return folder


@pytest.fixture
def folder_copy(svd_folder, tmp_path):
    target = tmp_path / svd_folder.name
    shutil.copytree(svd_folder, target)
    return target


# ------------------------------------------------------------------------------------------ loading
def test_load_round_trip_float32(svd_folder, originals):
    base = load_svd_base(svd_folder, dtype=torch.float32, unet_variant="svd")
    assert base.unet_loaded and base.vae_scaling_factor == pytest.approx(0.18215)
    assert os.path.basename(base.files["unet"]) == "diffusion_pytorch_model.safetensors"  # fp32 file preferred
    expected = {"unet": _state(originals["unet"]), "image_encoder": _state(originals["image_encoder"]),
                "vae": {k: v.half().float() for k, v in _state(originals["vae"]).items()}}  # only .fp16 shipped
    for part, reference in expected.items():
        loaded = getattr(base, part).state_dict()
        assert set(loaded) == set(reference), part
        for key, value in reference.items():
            assert torch.equal(loaded[key], value), f"{part}.{key}"
    position_ids = base.image_encoder.vision_model.embeddings.position_ids
    assert torch.equal(position_ids, torch.arange(50)[None])  # (224/32)^2 patches + class token
    for module in (base.unet, base.vae, base.image_encoder):
        assert not any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert base.clip_mean == pytest.approx(CLIP_MEAN) and base.clip_std == pytest.approx(CLIP_STD)
    assert base.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert base.vae_scale_factor == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(svd_folder, originals, dtype):
    base = load_svd_base(svd_folder, dtype=dtype)
    assert os.path.basename(base.files["unet"]) == "diffusion_pytorch_model.fp16.safetensors"
    for module in (base.unet, base.vae, base.image_encoder):
        assert {p.dtype for p in module.parameters()} == {dtype}
    weight = base.unet.conv_in.weight
    assert torch.equal(weight, originals["unet"].conv_in.weight.detach().half().to(dtype))


def test_bad_dtype_and_variant(svd_folder):
    with pytest.raises(MarionetteError, match="dtype"):
        load_svd_base(svd_folder, dtype=torch.float64)
    with pytest.raises(MarionetteError, match="variant"):
        load_svd_base(svd_folder, unet_variant="animatediff")


def test_missing_folder(tmp_path):
    with pytest.raises(MarionetteError) as error:
        load_svd_base(tmp_path / "nowhere")
    text = str(error.value)
    assert "does not exist" in text and "stabilityai/stable-video-diffusion-img2vid-xt" in text
    assert "licence" in text and "image_encoder/" in text


@pytest.mark.parametrize("removed, named", [
    ("unet/config.json", "unet/config.json"),
    ("vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"),
    ("image_encoder/model.safetensors", "image_encoder/model.fp16.safetensors (or image_encoder/model.safetensors)"),
    ("image_encoder/config.json", "image_encoder/config.json"),
    ("feature_extractor/preprocessor_config.json", "feature_extractor/preprocessor_config.json"),
    ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
])
def test_missing_file_is_named(folder_copy, removed, named):
    os.remove(folder_copy / removed)
    with pytest.raises(MarionetteError) as error:
        load_svd_base(folder_copy, dtype=torch.float16)
    text = str(error.value)
    assert f"has no {named}" in text and "stabilityai/stable-video-diffusion-img2vid-xt" in text
    assert "licence" in text and "Expected layout" in text


def test_missing_unet_weights(folder_copy):
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        os.remove(folder_copy / "unet" / name)
    with pytest.raises(MarionetteError, match="has no unet/diffusion_pytorch_model"):
        load_svd_base(folder_copy, unet_variant="svd")
    base = load_svd_base(folder_copy, unet_variant="mimicmotion")  # the animation UNets replace SVD's
    assert not base.unet_loaded and base.unet is None


def test_wrong_weights_are_refused(folder_copy):
    config = json.loads((folder_copy / "vae" / "config.json").read_text())
    config["latent_channels"] = 8
    (folder_copy / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MarionetteError, match="does not fit the SVD VAE"):
        load_svd_base(folder_copy)


# --------------------------------------------------------------------------------- animation UNets
def test_install_stableanimator_unet(svd_folder):
    base = load_svd_base(svd_folder, dtype=torch.float32, unet_variant="stableanimator")
    torch.manual_seed(1)
    source = build_stableanimator_unet(tiny_unet_config())
    weights = _state(source)
    assert any(".processor.id_to_k." in k for k in weights)
    install_animation_weights(base, weights)
    assert base.unet_loaded and base.pose_net is None
    loaded = base.unet.state_dict()
    assert set(loaded) == set(weights) and all(torch.equal(loaded[k], v) for k, v in weights.items())
    without_id = {k: v for k, v in weights.items() if ".processor.id_to_" not in k}
    with pytest.raises(MarionetteError, match="unet_variant='mimicmotion'"):
        install_animation_weights(base, without_id)


def test_install_mimicmotion_unet_and_pose_net(svd_folder):
    base = load_svd_base(svd_folder, dtype=torch.bfloat16, unet_variant="mimicmotion")
    torch.manual_seed(2)
    unet_weights = _state(build_unet(tiny_unet_config()))
    pose_weights = {k: v.half() for k, v in _state(PoseNet(out_channels=32)).items()}  # released: fp16
    install_animation_weights(base, unet_weights, pose_weights)
    assert base.unet.conv_in.weight.dtype == torch.bfloat16 and base.pose_net.scale.dtype == torch.bfloat16
    assert torch.equal(base.unet.conv_in.weight, unet_weights["conv_in.weight"].to(torch.bfloat16))
    truncated = dict(unet_weights)
    truncated.pop("conv_in.bias")
    with pytest.raises(MarionetteError, match="does not fit the mimicmotion UNet"):
        install_animation_weights(base, truncated)


def test_load_animation_unet_refusals(svd_folder, tmp_path):
    pose_file = tmp_path / "pose_net.pth"
    torch.save(PoseNet().state_dict(), pose_file)  # full size, but not a UNet
    svd = load_svd_base(svd_folder, unet_variant="svd")
    with pytest.raises(MarionetteError, match="SVD's own UNet"):
        load_animation_unet(svd, pose_file)
    animation = load_svd_base(svd_folder, unet_variant="stableanimator")
    with pytest.raises(MarionetteError, match="does not fit here"):
        load_animation_unet(animation, pose_file)
    assert svd_models.ANIMATION_FILES["mimicmotion"] == ("mimicmotion", "mimicmotion_unet")


# ------------------------------------------------------------------------------------- conditioning
def _official_clip_pixels(images, folder):
    """diffusers' StableVideoDiffusionPipeline._encode_image preprocessing for a PIL-derived [0, 1] image."""
    x = images.permute(0, 3, 1, 2).float() * 2.0 - 1.0
    x = (_resize_with_antialiasing(x, (224, 224)) + 1.0) / 2.0
    processor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor")
    return processor(images=x, do_normalize=True, do_center_crop=False, do_resize=False, do_rescale=False,
                     return_tensors="pt").pixel_values


@pytest.mark.parametrize("height, width", [(300, 460), (640, 360), (180, 250)])
def test_clip_preprocessing_matches_official(svd_folder, height, width):
    torch.manual_seed(height)
    images = torch.randint(0, 256, (1, height, width, 3)).float() / 255
    ours = clip_pixel_values(images)
    official = _official_clip_pixels(images, svd_folder)
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, official, atol=2e-5, rtol=0)


def test_clip_preprocessing_squashes_without_crop():
    """The whole reference reaches CLIP: a white band at the top of a tall image survives (a short-side
    resize plus centre crop, as ComfyUI's clip_preprocess does, would cut it off)."""
    images = torch.zeros(1, 448, 224, 3)
    images[:, :40] = 1.0
    pixels = clip_pixel_values(images, mean=(0, 0, 0), std=(1, 1, 1))
    assert pixels[0, :, 0].min() > 0.99 and pixels[0, :, -1].max() < 0.01


def test_clip_image_embedding(svd_folder, originals):
    base = load_svd_base(svd_folder, dtype=torch.float32)
    torch.manual_seed(3)
    images = torch.rand(256, 320, 3)
    embedding = clip_image_embedding(base.image_encoder, images, base.clip_mean, base.clip_std)
    with torch.no_grad():
        expected = originals["image_encoder"](pixel_values=_official_clip_pixels(images[None], svd_folder))
    assert embedding.shape == (1, 1, 24)
    torch.testing.assert_close(embedding[:, 0], expected.image_embeds, atol=1e-5, rtol=1e-5)


def test_reference_latent_unscaled_mode_repeated(originals):
    vae = originals["vae"].eval()
    torch.manual_seed(4)
    images = torch.rand(1, 16, 24, 3)
    latent = reference_latent(vae, images, num_frames=5, noise_aug_strength=0.1,
                              generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    pixels = images.permute(0, 3, 1, 2) * 2 - 1
    noisy = pixels + 0.1 * torch.randn(pixels.shape, generator=generator)
    with torch.no_grad():
        distribution = vae.encode(noisy).latent_dist
    assert latent.shape == (1, 5, 4, 8, 12)
    for frame in range(5):
        # (the batched and the single encode may take different oneDNN kernels: 1.04e-6 seen on one CPU)
        torch.testing.assert_close(latent[:, frame], distribution.mode(), atol=5e-6, rtol=0)
    assert not torch.allclose(latent[:, 0], distribution.mode() * 0.18215, atol=1e-3)


def test_reference_latent_draws_noise_at_zero_strength(originals):
    images = torch.rand(1, 8, 8, 3)
    generator = torch.Generator().manual_seed(5)
    clean = reference_latent(originals["vae"], images, 2, noise_aug_strength=0.0, generator=generator)
    assert not torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())
    with torch.no_grad():
        direct = originals["vae"].encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(clean[:, 1], direct, atol=1e-6, rtol=0)


def test_reference_latent_upcasts_half_vae(originals):
    vae = AutoencoderKLTemporalDecoder(**TINY_VAE).eval()
    vae.load_state_dict(originals["vae"].state_dict())
    vae.to(torch.bfloat16)
    reference = AutoencoderKLTemporalDecoder(**TINY_VAE).eval()
    reference.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})
    images = torch.rand(1, 8, 16, 3)
    latent = reference_latent(vae, images, 3, noise_aug_strength=0.0)
    assert latent.dtype == torch.bfloat16 and next(vae.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        expected = reference.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(latent[:, 0], expected.to(torch.bfloat16), atol=0, rtol=0)


def test_reference_latent_rejects_bad_size(originals):
    with pytest.raises(MarionetteError, match="multiples of 2"):
        reference_latent(originals["vae"], torch.rand(1, 9, 8, 3), 2)
    with pytest.raises(MarionetteError, match="IMAGE"):
        reference_latent(originals["vae"], torch.rand(3, 8, 8), 2)


def _decode_by_hand(vae, latents, sizes):
    frames, start = [], 0
    for size in sizes:
        out = vae.decode(latents[start:start + size] / 0.18215, num_frames=size).sample
        frames.append((out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1))
        start += size
    return torch.cat(frames)


def test_decode_latents_chunks(originals):
    vae = originals["vae"].eval()
    torch.manual_seed(6)
    latents = torch.randn(6, 4, 8, 8) * 0.18215
    with torch.no_grad():
        whole = decode_latents(vae, latents[None], chunk=6)
        halves = decode_latents(vae, latents, chunk=3)
        uneven = decode_latents(vae, latents, chunk=4)
        assert whole.shape == halves.shape == uneven.shape == (6, 16, 16, 3)
        torch.testing.assert_close(whole, _decode_by_hand(vae, latents, [6]), atol=1e-5, rtol=0)
        torch.testing.assert_close(halves, _decode_by_hand(vae, latents, [3, 3]), atol=1e-5, rtol=0)
        torch.testing.assert_close(uneven, _decode_by_hand(vae, latents, [4, 2]), atol=1e-5, rtol=0)
    assert whole.dtype == torch.float32 and 0 <= float(whole.min()) and float(whole.max()) <= 1
    # the temporal decoder mixes the frames of a chunk, so the chunk size matters
    assert not torch.allclose(whole, halves, atol=1e-4)
    with pytest.raises(MarionetteError, match="chunk"):
        decode_latents(vae, latents, chunk=0)
