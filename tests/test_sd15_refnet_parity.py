"""Numerical parity of the SD1.5 ReferenceNet family's modules with an independent plain-torch
re-derivation of the official maths (tests/sd15_refnet_plain.py) on random tiny weights: the motion module
(position table included), the whole denoising UNet3D (motion modules incl. the mid block, guidance added
after conv_in) with reference attention in the conditional branch and without it in the unconditional one,
and the SD1.5 spatial path against diffusers' UNet2DConditionModel frame by frame.
fp32 within 1e-4, fp64 within 1e-10 (relative to the output's scale)."""
import pytest
import torch

import sd15_refnet_plain as plain
from marionette.models.core.modules import finish
from marionette.models.core.seeding import seeded
from marionette.models.errors import MarionetteError
from marionette.models.sd15.motion import MotionModule, sinusoid_table
from marionette.models.sd15.reference import record_reference, reference_attention
from marionette.models.sd15.refnet_tiny import TINY_MOTION, TINY_UNET, tiny_backbone, tiny_unet_config
from marionette.models.sd15.refnet_unet import build_denoising_unet

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
HEADS, GROUPS = TINY_UNET["attention_head_dim"], TINY_UNET["norm_num_groups"]
MOTION = (TINY_MOTION["num_attention_heads"], TINY_MOTION["norm_num_groups"])


def error(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1.0))


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def backbone(request):
    return tiny_backbone(seed=3, dtype=request.param)


def inputs(dtype, frames=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    channels = TINY_UNET["block_out_channels"][0]
    return {"latents": torch.randn(1, 4, frames, size, size, generator=g, dtype=dtype),
            "reference": torch.randn(1, 4, size, size, generator=g, dtype=dtype),
            "clip": torch.randn(1, 1, TINY_UNET["cross_attention_dim"], generator=g, dtype=dtype),
            "guidance": torch.randn(1, channels, frames, size, size, generator=g, dtype=dtype) * 0.5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("frames", [1, 16, 32])
def test_motion_module_matches_the_plain_derivation(dtype, frames):
    with seeded(1):
        module = finish(MotionModule(32, heads=4, groups=8, max_len=32), dtype)
    x = torch.randn(2 * frames, 32, 3, 5, dtype=dtype, generator=torch.Generator().manual_seed(2))
    W = module.state_dict()
    with torch.no_grad():
        ours = module(x, frames)
    theirs = plain.motion_module(x, {f"m.{k}": v for k, v in W.items()}, "m", frames, 4, 8)
    assert error(ours, theirs) <= TOLERANCE[dtype]
    assert error(ours, x) > 1e-3  # the module does something


def test_position_table_is_animatediffs_sinusoids_and_windows_stop_at_32():
    for channels in (320, 640, 1280, 6):
        table = plain.position_table(32, channels, torch.float64)
        assert torch.allclose(sinusoid_table(32, channels)[0].double(), table,
                              atol=4e-6)  # float32 angles, as the official buffer
    module = MotionModule(16, heads=2, groups=4, max_len=32)
    with pytest.raises(MarionetteError, match="at most 32"):
        module(torch.zeros(33, 16, 2, 2), 33)


def test_denoising_unet3d_with_reference_attention_matches_the_plain_derivation(backbone):
    dtype = backbone.dtype
    x = inputs(dtype)
    denoiser, reference = backbone.denoising_unet, backbone.reference_unet
    W_denoiser, W_reference = denoiser.state_dict(), reference.state_dict()
    with torch.no_grad():
        banks = record_reference(reference, x["reference"], x["clip"])
        with reference_attention(denoiser, banks):
            cond = denoiser(x["latents"], 751, x["clip"], x["guidance"])
        uncond = denoiser(x["latents"], 751, torch.zeros_like(x["clip"]), x["guidance"])
    recorded = {}
    assert plain.unet(W_reference, x["reference"], 0, x["clip"], heads=HEADS, groups=GROUPS, record=recorded) is None
    assert len(recorded) == 16
    for ours, (name, theirs) in zip(banks, recorded.items()):
        assert error(ours, theirs) <= TOLERANCE[dtype], name
    plain_cond = plain.unet(W_denoiser, x["latents"], 751, x["clip"], heads=HEADS, groups=GROUPS, motion=MOTION,
                            guidance=x["guidance"], banks=recorded)
    plain_uncond = plain.unet(W_denoiser, x["latents"], 751, torch.zeros_like(x["clip"]), heads=HEADS,
                              groups=GROUPS, motion=MOTION, guidance=x["guidance"])
    assert error(cond, plain_cond) <= TOLERANCE[dtype]
    assert error(uncond, plain_uncond) <= TOLERANCE[dtype]
    assert error(cond, uncond) > 1e-3  # reference tokens and the CLIP token change the prediction
    # the banks are gone after the context: the same call without them is the unconditional structure
    with torch.no_grad():
        again = denoiser(x["latents"], 751, x["clip"], x["guidance"])
    no_reference = plain.unet(W_denoiser, x["latents"], 751, x["clip"], heads=HEADS, groups=GROUPS, motion=MOTION,
                              guidance=x["guidance"])
    assert error(again, no_reference) <= TOLERANCE[dtype]


def test_frames_are_coupled_only_through_the_motion_modules():
    with seeded(5):
        spatial_only = finish(build_denoising_unet(tiny_unet_config(), motion={}))
    x = inputs(torch.float32, frames=3)
    with torch.no_grad():
        together = spatial_only(x["latents"], 10, x["clip"])
        alone = spatial_only(x["latents"][:, :, 1:2], 10, x["clip"])
    assert error(together[:, :, 1:2], alone) <= 1e-5
    backbone = tiny_backbone(seed=5)
    with torch.no_grad():
        together = backbone.denoising_unet(x["latents"], 10, x["clip"])
        alone = backbone.denoising_unet(x["latents"][:, :, 1:2], 10, x["clip"])
    assert error(together[:, :, 1:2], alone) > 1e-3


def test_spatial_path_equals_diffusers_sd15_unet_per_frame():
    from diffusers import UNet2DConditionModel
    with seeded(7):
        ours = finish(build_denoising_unet(tiny_unet_config(), motion={}))
    theirs = UNet2DConditionModel.from_config(tiny_unet_config())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()
    x = inputs(torch.float32, frames=3, size=12)  # 12: an odd side at the lowest level (forwarded upsample size)
    with torch.no_grad():
        a = ours(x["latents"], 500, x["clip"])
        frames = x["latents"][0].transpose(0, 1)
        b = theirs(frames, 500, x["clip"].expand(3, -1, -1)).sample.transpose(0, 1)[None]
    assert error(a, b) <= 1e-4


def test_unet_input_errors_name_the_fix():
    backbone = tiny_backbone(seed=0)
    x = inputs(torch.float32, frames=2)
    with pytest.raises(MarionetteError, match="at most 32"):
        backbone.denoising_unet(torch.zeros(1, 4, 33, 8, 8), 1, x["clip"])
    with pytest.raises(MarionetteError, match="Guidance features have shape"):
        backbone.denoising_unet(x["latents"], 1, x["clip"], x["guidance"][:, :, :1])
    with pytest.raises(MarionetteError, match="reference banks"):
        with reference_attention(backbone.denoising_unet, []):
            pass
