"""SVD sampler: the schedule against independent formulas and diffusers' scheduler, the whole loop against a
re-derivation in the official pipelines' structure (fuse each branch, then CFG, then diffusers' Euler step),
window coverage and weights, UNet call counts, seeding, cancellation, errors, and a tiny real UNet."""
import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from marionette.models.errors import MarionetteError
from marionette.models.svd.configs import tiny_unet_config
from marionette.models.mimicmotion.pose_net import PoseNet
from marionette.models.svd.sampler import SamplerSettings, effective_tile, sample, seeded_generator, start_noise
from marionette.models.svd.schedule import (edm_scalings, fusion_weights, karras_sigmas, tile_weights,
                                            tile_windows)
from marionette.models.svd.unet import build_unet

H, W, TOKENS, DIM, POSE_CH = 4, 6, 2, 8, 5

# SVD-xt's scheduler_config.json (peers_svd.md 2.6).
SVD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                     prediction_type="v_prediction", sigma_min=0.002, sigma_max=700.0, use_karras_sigmas=True,
                     timestep_type="continuous", timestep_spacing="leading", steps_offset=1,
                     interpolation_type="linear")


class FakeUNet:
    """A UNet-shaped function that uses every input (noisy and reference channels, timestep, context,
    micro-conditioning, pose, and the other frames of the window), and records its calls."""

    def __init__(self):
        gen = torch.Generator().manual_seed(7)
        self.mix = torch.randn(4, 8, generator=gen) * 0.5
        self.calls = []

    def __call__(self, sample, timestep, encoder_hidden_states, added_time_ids, pose_features=None,
                 return_dict=True):
        self.calls.append((tuple(sample.shape), pose_features is not None))
        out = torch.einsum("oc,bfchw->bfohw", self.mix, sample)
        out = torch.tanh(out + 0.3 * out.mean(dim=1, keepdim=True))  # frames interact inside a window
        out = out * (1 + 0.05 * timestep) + 0.1 * encoder_hidden_states.mean() + 0.01 * added_time_ids.sum()
        if pose_features is not None:
            out = out + 0.2 * pose_features.mean(dim=1, keepdim=True).unsqueeze(0)
        return (out,)


def inputs(frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, TOKENS, DIM, generator=gen)
    ref = torch.randn(4, H, W, generator=gen)
    pose = torch.randn(frames, POSE_CH, H, W, generator=gen)
    return cond, torch.zeros_like(cond), ref, pose


def official_structure_loop(unet, cond, uncond, ref, pose, settings):
    """The official denoising loop's structure with diffusers' own scheduler: both branches fused over the
    windows, divided by the per-frame weight total, CFG per frame, then `scheduler.step`."""
    frames = pose.shape[0]
    tile, overlap = effective_tile(frames, settings)
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    scheduler.set_timesteps(settings.steps)
    # the official prepare_latents: one tile drawn with diffusers' randn_tensor, repeated over the frames
    generator = torch.Generator().manual_seed(settings.seed)
    latents = randn_tensor((1, tile, 4, H, W), generator=generator, dtype=torch.float32)
    latents = latents.repeat(1, frames // tile + 1, 1, 1, 1)[:, :frames] * scheduler.init_noise_sigma
    refs = torch.stack([torch.zeros_like(ref), ref]).unsqueeze(1).repeat(1, frames, 1, 1, 1)
    contexts, poses = [uncond, cond], [None, pose]
    ids = torch.tensor([[settings.fps - 1, settings.motion_bucket_id, settings.noise_aug_strength]])
    windows = [[0, *range(i + 1, i + tile)] for i in range(0, frames - tile + 1, tile - overlap)]
    if windows[-1][-1] < frames - 1:
        windows.append([0, *range(frames - tile + 1, frames)])
    ramp = (torch.arange(tile) + 0.5) * 2 / tile
    ramp = torch.minimum(ramp, 2 - ramp)
    scale = torch.linspace(settings.cfg_min, settings.cfg_max, frames).view(1, frames, 1, 1, 1)
    for t in scheduler.timesteps:
        model_in = torch.cat([scheduler.scale_model_input(torch.cat([latents] * 2), t), refs], dim=2)
        pred = torch.zeros(2, frames, 4, H, W)
        count = torch.zeros(frames)
        for idx in windows:
            for branch in (0, 1):
                p = None if poses[branch] is None else poses[branch][idx]
                out = unet(model_in[branch:branch + 1, idx], t, contexts[branch], ids, p)[0]
                pred[branch, idx] += out[0] * ramp[:, None, None, None]
            count[idx] += ramp
        pred = pred / count[None, :, None, None, None]
        guided = pred[:1] + scale * (pred[1:] - pred[:1])
        latents = scheduler.step(guided, t, latents, return_dict=False)[0]
    return latents[0]


def test_karras_sigmas_match_the_formula_and_diffusers():
    steps = 25
    ours = karras_sigmas(steps)
    expected = [(700 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 700 ** (1 / 7))) ** 7 for i in range(steps)]
    assert ours.dtype == torch.float32 and ours.shape == (steps + 1,) and ours[-1] == 0
    np.testing.assert_allclose(ours[:-1].double().numpy(), expected, rtol=1e-6)
    assert ours[0] == pytest.approx(700.0) and ours[-2] == pytest.approx(0.002, rel=1e-5)
    scheduler = EulerDiscreteScheduler(**SVD_SCHEDULER)
    scheduler.set_timesteps(steps)
    assert torch.equal(ours, scheduler.sigmas)
    c_noise = torch.stack([edm_scalings(s)[3] for s in ours[:-1]])
    torch.testing.assert_close(c_noise, scheduler.timesteps)
    assert scheduler.init_noise_sigma == pytest.approx(math.sqrt(700.0 ** 2 + 1))


def test_edm_scalings_are_sigma_data_1_v_prediction():
    for sigma in (0.002, 0.7, 14.0, 700.0):
        c_skip, c_out, c_in, c_noise = (float(c) for c in edm_scalings(torch.tensor(sigma)))
        assert c_skip == pytest.approx(1 / (sigma ** 2 + 1), rel=1e-5)
        assert c_out == pytest.approx(-sigma / math.sqrt(sigma ** 2 + 1), rel=1e-5)
        assert c_in == pytest.approx(1 / math.sqrt(sigma ** 2 + 1), rel=1e-5)
        assert c_noise == pytest.approx(0.25 * math.log(sigma), rel=1e-5, abs=1e-6)


def hand_x0(fake, x, sigma, cond, uncond, ref, pose, g):
    """x0 at sigma written out: c_in scaling, both passes (zero reference and no pose for the
    unconditional one), per-frame CFG, then c_skip x + c_out v."""
    frames = x.shape[0]
    scaled = (x / math.sqrt(sigma ** 2 + 1)).unsqueeze(0)
    t = torch.tensor(0.25 * math.log(sigma))
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    v_c = fake(torch.cat([scaled, ref.expand(1, frames, 4, H, W)], 2), t, cond, ids, pose)[0][0]
    v_u = fake(torch.cat([scaled, torch.zeros(1, frames, 4, H, W)], 2), t, uncond, ids, None)[0][0]
    v = v_u + g * (v_c - v_u)
    return x / (sigma ** 2 + 1) - v * sigma / math.sqrt(sigma ** 2 + 1)


def test_first_steps_equal_a_hand_derivation():
    frames = 3
    cond, uncond, ref, pose = inputs(frames)
    settings = SamplerSettings(steps=4, cfg_min=1.5, cfg_max=3.0, tile_size=8, seed=11)
    seen = []
    sample(FakeUNet(), cond, uncond, ref, pose, settings, on_step=lambda s, n, x0: seen.append(x0.clone()))
    fake, g = FakeUNet(), torch.tensor([1.5, 2.25, 3.0]).view(-1, 1, 1, 1)
    sigma0, sigma1 = 700.0, (700 ** (1 / 7) + (0.002 ** (1 / 7) - 700 ** (1 / 7)) / 3) ** 7
    x = torch.randn(frames, 4, H, W, generator=torch.Generator().manual_seed(11)) * math.sqrt(sigma0 ** 2 + 1)
    x0 = hand_x0(fake, x, sigma0, cond, uncond, ref, pose, g)
    torch.testing.assert_close(seen[0], x0, rtol=1e-5, atol=1e-4)
    x = x + (x - x0) / sigma0 * (sigma1 - sigma0)  # Euler
    torch.testing.assert_close(seen[1], hand_x0(fake, x, sigma1, cond, uncond, ref, pose, g), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("frames,tile,overlap,cfg", [(5, 8, 4, (2.0, 2.0)),   # shorter than a tile
                                                     (11, 4, 2, (1.0, 3.0)),  # several windows, ramped CFG
                                                     (10, 5, 1, (2.5, 1.5))])  # a flush last window
def test_sampler_matches_the_official_loop_with_diffusers_scheduler(frames, tile, overlap, cfg):
    cond, uncond, ref, pose = inputs(frames, seed=frames)
    settings = SamplerSettings(steps=5, cfg_min=cfg[0], cfg_max=cfg[1], tile_size=tile, tile_overlap=overlap, seed=3)
    ours = sample(FakeUNet(), cond, uncond, ref, pose, settings)
    theirs = official_structure_loop(FakeUNet(), cond, uncond, ref, pose, settings)
    assert ours.shape == (frames, 4, H, W)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_windows_cover_every_frame_and_weights_sum_to_one():
    for frames in range(2, 40):
        for tile in range(2, frames + 1):
            for overlap in range(1, tile):
                windows = tile_windows(frames, tile, overlap)
                assert all(w[0] == 0 and len(w) == tile == len(set(w)) for w in windows)
                assert set().union(*windows) == set(range(frames))
                total = torch.zeros(frames)
                for window, weight in zip(windows, fusion_weights(frames, windows, tile_weights(tile))):
                    total[window] += weight
                torch.testing.assert_close(total, torch.ones(frames))
    assert 2 not in set().union(*tile_windows(4, 2, 0))  # why the settings refuse overlap 0
    assert tile_windows(16, 8, 4) == [[0, *range(1, 8)], [0, *range(5, 12)], [0, *range(9, 16)]]
    assert tile_windows(10, 5, 1) == [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8], [0, 6, 7, 8, 9]]
    weights = tile_weights(4)
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75, 0.75, 0.25]))


@pytest.mark.parametrize("cfg,passes", [((1.0, 1.0), 1), ((1.0, 2.0), 2), ((3.0, 3.0), 2)])
def test_unet_calls_per_step(cfg, passes):
    frames, steps = 16, 3
    cond, uncond, ref, pose = inputs(frames)
    fake = FakeUNet()
    settings = SamplerSettings(steps=steps, cfg_min=cfg[0], cfg_max=cfg[1], tile_size=8, tile_overlap=4)
    sample(fake, cond, None if passes == 1 else uncond, ref, pose, settings)
    assert len(fake.calls) == steps * 3 * passes  # 3 windows of 8 frames for 16 frames
    assert all(shape == (1, 8, 8, H, W) for shape, _ in fake.calls)
    assert sum(has_pose for _, has_pose in fake.calls) == steps * 3  # the unconditional pass has no pose


def test_cfg_one_equals_the_conditional_prediction_alone():
    frames = 6
    cond, uncond, ref, pose = inputs(frames)
    one = sample(FakeUNet(), cond, None, ref, pose, SamplerSettings(steps=3, cfg_min=1.0, cfg_max=1.0, tile_size=4,
                                                                     tile_overlap=2))
    ramped = sample(FakeUNet(), cond, uncond, ref, pose, SamplerSettings(steps=3, cfg_min=1.0, cfg_max=1.0 + 1e-7,
                                                                          tile_size=4, tile_overlap=2))
    torch.testing.assert_close(one, ramped, rtol=1e-4, atol=1e-4)


def test_seeded_runs_reproduce_and_seeds_differ():
    frames = 7
    cond, uncond, ref, pose = inputs(frames)
    settings = SamplerSettings(steps=3, tile_size=4, tile_overlap=1, seed=5)
    first = sample(FakeUNet(), cond, uncond, ref, pose, settings)
    assert torch.equal(first, sample(FakeUNet(), cond, uncond, ref, pose, settings))
    other = sample(FakeUNet(), cond, uncond, ref, pose, SamplerSettings(steps=3, tile_size=4, tile_overlap=1, seed=6))
    assert not torch.allclose(first, other)
    noise = start_noise(10, 4, (H, W), seeded_generator(5))
    assert torch.equal(noise[:4], noise[4:8]) and torch.equal(noise[:2], noise[8:])  # periodic, as official


def test_on_step_reports_progress_and_cancel_propagates():
    frames = 5
    cond, uncond, ref, pose = inputs(frames)
    settings = SamplerSettings(steps=4, tile_size=8, drop_first_frame=True)
    progress = []
    out = sample(FakeUNet(), cond, uncond, ref, pose, settings,
                 on_step=lambda s, n, x0: progress.append((s, n, x0.clone())))
    assert [(s, n) for s, n, _ in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert out.shape == (frames, 4, H, W) and progress[-1][2].shape == (frames - 1, 4, H, W)  # previews: no anchor
    torch.testing.assert_close(progress[-1][2], out[1:])  # the last step lands on sigma 0, i.e. on x0

    class Cancelled(Exception):
        pass

    def cancel(step, total, preview):
        if step == 2:
            raise Cancelled()

    fake = FakeUNet()
    with pytest.raises(Cancelled):
        sample(fake, cond, uncond, ref, pose, settings, on_step=cancel)
    assert len(fake.calls) == 2 * 2  # two steps of one window with two passes, then nothing


def test_drop_first_frame_keeps_the_anchor_latent_for_decoding():
    """MimicMotion's anchor is dropped after decoding (as officially), so the sampler returns it."""
    frames = 6
    cond, uncond, ref, pose = inputs(frames)
    kept = sample(FakeUNet(), cond, uncond, ref, pose, SamplerSettings(steps=2, tile_size=4, tile_overlap=2))
    anchored = sample(FakeUNet(), cond, uncond, ref, pose, SamplerSettings(steps=2, tile_size=4, tile_overlap=2,
                                                                            drop_first_frame=True))
    torch.testing.assert_close(anchored, kept)


def test_start_noise_draws_in_the_model_dtype_from_the_given_generator():
    """The official prepare_latents draws in the UNet's dtype from the caller's generator."""
    half = start_noise(3, 3, (H, W), seeded_generator(9), torch.float16)
    expected = torch.randn(3, 4, H, W, generator=torch.Generator().manual_seed(9), dtype=torch.float16).float()
    assert half.dtype == torch.float32 and torch.equal(half, expected)


@pytest.mark.parametrize("fields,word", [(dict(cfg_min=0.5), "cfg_min"), (dict(cfg_max=0.0), "cfg_max"),
                                         (dict(tile_overlap=16), "overlap"),
                                         (dict(tile_overlap=0), "tile_overlap"), (dict(steps=0), "steps"),
                                         (dict(tile_size=1), "tile_size"), (dict(noise_aug_strength=-1), "noise"),
                                         (dict(seed=-3), "seed"), (dict(motion_bucket_id=5000), "motion")])
def test_bad_settings_raise_clear_errors(fields, word):
    with pytest.raises(MarionetteError, match=word) as error:
        SamplerSettings(**fields)
    assert error.value.fix


def test_bad_inputs_raise_clear_errors():
    cond, uncond, ref, pose = inputs(4)
    settings = SamplerSettings(steps=1)
    with pytest.raises(MarionetteError, match="unconditional"):
        sample(FakeUNet(), cond, None, ref, pose, settings)
    with pytest.raises(MarionetteError, match="reference latent"):
        sample(FakeUNet(), cond, uncond, ref[:3], pose, settings)
    with pytest.raises(MarionetteError, match="Pose features"):
        sample(FakeUNet(), cond, uncond, ref, pose[..., :3], settings)
    with pytest.raises(MarionetteError, match="number of frames"):
        sample(FakeUNet(), cond, uncond, ref, None, settings)
    with pytest.raises(MarionetteError, match="preset"):
        SamplerSettings.preset("svd")
    mimic = SamplerSettings.preset("mimicmotion", steps=20)
    assert (mimic.tile_size, mimic.tile_overlap, mimic.cfg_max, mimic.steps, mimic.drop_first_frame) == (72, 6, 2.0, 20,
                                                                                                          True)
    assert SamplerSettings().added_time_ids().tolist() == [[6.0, 127.0, pytest.approx(0.02)]]


def test_tiny_real_unet_end_to_end():
    torch.manual_seed(0)
    config = tiny_unet_config()
    unet = build_unet(config)
    pose_net = PoseNet(out_channels=config["block_out_channels"][0])
    torch.nn.init.normal_(pose_net.final_proj.weight, std=0.02)  # a fresh PoseNet adds zeros
    frames, h, w = 6, 8, 8
    with torch.no_grad():
        pose = pose_net(torch.rand(frames, 3, 8 * h, 8 * w) * 2 - 1)
    cond = torch.randn(1, 1, config["cross_attention_dim"])
    settings = SamplerSettings(steps=3, tile_size=4, tile_overlap=2, cfg_min=1.0, cfg_max=2.5)
    out = sample(unet, cond, torch.zeros_like(cond), torch.randn(4, h, w), pose, settings)
    assert out.shape == (frames, 4, h, w) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.std() > 0.01
