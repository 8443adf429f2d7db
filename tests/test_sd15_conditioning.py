"""Champ / Moore-AnimateAnyone inputs: the CLIP and VAE pixels against the official preprocessing (PIL squash +
transformers' CLIPImageProcessor, diffusers' VaeImageProcessor), the reference latent, chunked decoding."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from transformers import CLIPImageProcessor

from marionette.models.errors import MarionetteError
from marionette.models.pipelines.sd15_conditioning import (VAE_SCALING, clip_pixels, decode_latents,
                                                           guidance_pixels, reference_latent, reference_pixels)


def photo(height=96, width=64, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).float().div(255).unsqueeze(0)


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                         layers_per_block=1).eval()


def test_clip_pixels_are_the_official_ones():
    pil, image = photo()
    official = CLIPImageProcessor().preprocess(pil.resize((224, 224)), return_tensors="pt").pixel_values
    assert torch.allclose(clip_pixels(image), official, atol=1e-5)


@pytest.mark.parametrize("size", [(96, 64), (64, 48)])
def test_reference_pixels_are_the_official_ones(size):
    pil, image = photo()
    official = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True).preprocess(pil, height=size[0],
                                                                                      width=size[1])
    assert torch.allclose(reference_pixels(image, size), official, atol=1e-6)


def test_reference_latent_is_the_scaled_mean_and_decoding_inverts_the_scale():
    vae = tiny_vae()
    _, image = photo(32, 32)
    with torch.no_grad():
        latent = reference_latent(vae, image, (32, 32), "cpu", torch.float32)
        mean = vae.encode(reference_pixels(image, (32, 32))).latent_dist.mean
        assert torch.allclose(latent, mean * VAE_SCALING)
        latents = torch.randn(5, 4, 16, 16)
        frames = decode_latents(vae, latents, 2, "cpu", torch.float32)
        one_by_one = torch.cat([vae.decode(latents[i:i + 1] / 0.18215).sample for i in range(5)])
    assert frames.shape == (5, 32, 32, 3)
    assert torch.allclose(frames, (one_by_one / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1), atol=1e-5)


def test_decode_checks_between_chunks_and_errors():
    vae, calls = tiny_vae(), []
    with torch.no_grad():
        decode_latents(vae, torch.zeros(5, 4, 4, 4), 2, "cpu", torch.float32, check=lambda: calls.append(1))
    assert len(calls) == 3
    with pytest.raises(MarionetteError, match="decode_chunk"):
        decode_latents(vae, torch.zeros(1, 4, 4, 4), 0, "cpu", torch.float32)
    with pytest.raises(MarionetteError, match="one RGB frame"):
        reference_pixels(torch.zeros(2, 8, 8, 3), (8, 8))


def test_guidance_pixels_stay_in_unit_range():
    frames = torch.rand(3, 16, 8, 3)
    out = guidance_pixels(frames, torch.float16, "cpu")
    assert out.shape == (3, 3, 16, 8) and out.dtype == torch.float16
    assert torch.allclose(out.float(), frames.permute(0, 3, 1, 2), atol=1e-3)


def test_vae_loads_from_a_diffusers_folder_and_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    from marionette.models.sd15.vae import load_vae as load_sd_vae
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "sd-vae-ft-mse")
    loaded = load_sd_vae(tmp_path / "sd-vae-ft-mse", torch.float32)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).latent_dist.mean, vae.encode(x).latent_dist.mean)
    save_file({"encoder.down.0.block.0.conv1.weight": torch.zeros(2, 2, 3, 3), "other.weight": torch.zeros(1)},
              str(tmp_path / "wrong.safetensors"))
    with pytest.raises(MarionetteError, match="sd-vae-ft-mse"):
        load_sd_vae(tmp_path / "wrong.safetensors", torch.float32)
