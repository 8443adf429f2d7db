"""ComfyUI's LATENT convention (host tier): the latents SVD Animate Sampler returns, put through ComfyUI's own
VAE Decode with the SVD VAE that ComfyUI builds from a single file's `first_stage_model.*`, give our frames.

The VAE is full size (ComfyUI's SVD VAE has a fixed architecture) with random weights; the UNet, CLIP and
PoseNet are the tiny ones, so the test runs in seconds on a CPU."""
from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import comfy_model_code  # noqa: E402

KEYS_JSON = Path(__file__).resolve().parent / "data" / "keys" / "svd_xt_single_file.json"
FIRST_STAGE = "first_stage_model."
SIZE, FRAMES = 64, 3


class RandomFullSizeFile:
    """A full-size single-file SVD checkpoint seen as a tensor source: the committed key list, and a
    deterministic well-scaled random tensor for every name that is read."""

    def __init__(self):
        self.shapes = {k: tuple(v) for k, v in json.loads(KEYS_JSON.read_text())["keys"].items()}

    def keys(self) -> list[str]:
        return list(self.shapes)

    def like(self, name: str):
        return self.shapes[name], torch.float32, torch.device("cpu")

    def get(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        if len(shape) >= 2:
            return torch.randn(shape, generator=generator) / max(1, int(torch.tensor(shape[1:]).prod())) ** 0.5
        if name.endswith("mix_factor"):
            return torch.randn(shape, generator=generator)
        if name.endswith("weight"):
            return 1 + 0.1 * torch.randn(shape, generator=generator)
        return 0.1 * torch.randn(shape, generator=generator)


def _our_vae(source: RandomFullSizeFile):
    from diffusers import AutoencoderKLTemporalDecoder

    from marionette.models.svd.single_file import _convert, plan_svd_single_file
    from marionette.models.svd.single_file_keys import svd_xt_configs
    plan = plan_svd_single_file(source.keys())
    tensors = _convert(plan, source, ("vae",), torch.float32, "random full-size file")["vae"]
    vae = AutoencoderKLTemporalDecoder.from_config(dict(svd_xt_configs().vae))
    vae.load_state_dict(tensors, strict=True)
    return vae.eval().requires_grad_(False)


def test_sampler_latents_through_comfyui_vae_decode_equal_our_frames():
    comfy_model_code()
    import comfy.sd
    from nodes import VAEDecode

    from marionette.models.pipelines.svd_animation import SVDAnimation, animate_svd
    from marionette.models.pipelines.svd_tiny import tiny_animation_model
    from marionette.models.svd.sampler import SamplerSettings
    source = RandomFullSizeFile()
    comfy_vae = comfy.sd.VAE(sd={k[len(FIRST_STAGE):]: source.get(k) for k in source.keys()
                                 if k.startswith(FIRST_STAGE)}, dtype=torch.float32)
    base = tiny_animation_model("stableanimator")
    base.vae = _our_vae(source)
    model = SVDAnimation(base, "stableanimator", tiny=True)
    generator = torch.Generator().manual_seed(3)
    reference = torch.rand(1, SIZE, SIZE, 3, generator=generator)
    poses = torch.rand(FRAMES, SIZE, SIZE, 3, generator=generator)
    settings = SamplerSettings.preset("stableanimator", steps=2, seed=7)
    result = animate_svd(model, reference, poses, settings, device=torch.device("cpu"), decode_chunk=FRAMES)

    (images,) = VAEDecode().decode(comfy_vae, {"samples": result.latents})
    assert images.shape == result.frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert result.frames.std() > 0.02  # not a flat image
    torch.testing.assert_close(images.float(), result.frames, atol=2e-4, rtol=0)
    (scaled,) = VAEDecode().decode(comfy_vae, {"samples": result.latents * 0.18215})  # the old convention
    assert (scaled.float() - result.frames).abs().max() > 0.05
