"""SD1.5 family sampler (Champ, Moore-AnimateAnyone): the DDIM schedule against diffusers' DDIMScheduler built
from the official inference yaml and against a plain-Python re-derivation, one zero-SNR v-prediction step
against the forward-process definitions, the context windows against a plain-Python re-derivation of the
official "uniform" scheduler, and the windowed CFG loop against the official loop's structure."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from marionette.models.errors import MarionetteError
from marionette.models.sd15.context import context_windows
from marionette.models.sd15.ddim import alphas_cumprod, betas, ddim_schedule, trailing_timesteps
from marionette.models.sd15.sampler import SD15SamplerSettings, sample, seeded_generator, start_noise

# Champ configs/inference/inference.yaml (+ enable_zero_snr) = Moore configs/inference/inference_v2.yaml.
OFFICIAL_YAML = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                     steps_offset=1, clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                     prediction_type="v_prediction")
H, W = 3, 5


def official_scheduler(beta_schedule="linear") -> DDIMScheduler:
    return DDIMScheduler(**{**OFFICIAL_YAML, "beta_schedule": beta_schedule})


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_alphas_cumprod_match_diffusers(beta_schedule):
    ours = alphas_cumprod(beta_schedule)
    theirs = official_scheduler(beta_schedule).alphas_cumprod.double()
    assert ours[-1] == 0.0 and theirs[-1] == 0.0  # zero terminal SNR
    assert torch.allclose(ours, theirs, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 7, 20, 25, 30, 50])
def test_trailing_timesteps_match_diffusers(steps):
    scheduler = official_scheduler()
    scheduler.set_timesteps(steps)
    assert trailing_timesteps(steps) == scheduler.timesteps.tolist()
    assert ddim_schedule(steps).timesteps[0] == 999


def test_schedule_rederived_in_plain_python():
    """Lin et al. 2023, Algorithm 1, in plain float64 Python from the yaml's numbers."""
    for name, beta in (("linear", [0.00085 + (0.012 - 0.00085) * i / 999 for i in range(1000)]),
                       ("scaled_linear", [(0.00085 ** 0.5 + (0.012 ** 0.5 - 0.00085 ** 0.5) * i / 999) ** 2
                                          for i in range(1000)])):
        bar, product = [], 1.0
        for b in beta:
            product *= 1.0 - b
            bar.append(product)
        root = [math.sqrt(a) for a in bar]
        first, last = root[0], root[-1]
        rescaled = [((r - last) * first / (first - last)) ** 2 for r in root]
        ours = alphas_cumprod(name).tolist()
        assert max(abs(a - b) for a, b in zip(ours, rescaled)) < 1e-12
        assert abs(ours[0] - (1.0 - beta[0])) < 1e-15  # the first step is unchanged by the rescale
        assert torch.allclose(betas(name), torch.tensor(beta, dtype=torch.float64), rtol=1e-12, atol=0)


def test_comfyui_names_are_swapped():
    """The naming trap: ComfyUI's "linear" is diffusers' "scaled_linear", its "sqrt_linear" our "linear"."""
    from conftest import comfy_model_code
    comfy_model_code()
    from comfy.ldm.modules.diffusionmodules.util import make_beta_schedule
    comfy_linear = torch.as_tensor(make_beta_schedule("linear", 1000, 0.00085, 0.012), dtype=torch.float64)
    comfy_sqrt_linear = torch.as_tensor(make_beta_schedule("sqrt_linear", 1000, 0.00085, 0.012),
                                        dtype=torch.float64)
    assert torch.allclose(comfy_linear, betas("scaled_linear"), rtol=1e-12, atol=0)
    assert torch.allclose(comfy_sqrt_linear, betas("linear"), rtol=1e-12, atol=0)


@pytest.mark.parametrize("steps", [20, 30])
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_every_step_matches_diffusers(steps, beta_schedule):
    scheduler = official_scheduler(beta_schedule)
    scheduler.set_timesteps(steps)
    ours = ddim_schedule(steps, beta_schedule)
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 4, 3, H, W, generator=gen)
    for t in scheduler.timesteps:
        v = torch.randn(x.shape, generator=gen)
        out = scheduler.step(v, t, x)
        x_prev, x0 = ours.step(v, int(t), x)
        assert torch.allclose(x_prev, out.prev_sample, rtol=1e-5, atol=2e-6)
        assert torch.allclose(x0, out.pred_original_sample, rtol=1e-5, atol=2e-6)
        x = out.prev_sample


@pytest.mark.parametrize("timestep", [999, 949, 500, 49, 0])
def test_one_step_follows_the_forward_process(timestep):
    """x = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0 (v-prediction's definition): a
    perfect v gives back x0 exactly and lands on the same x0 and eps at the previous timestep (eta 0)."""
    schedule = ddim_schedule(20)
    a = float(schedule.alphas_cumprod[timestep])
    previous = timestep - 50
    a_prev = float(schedule.alphas_cumprod[previous]) if previous >= 0 else 1.0
    gen = torch.Generator().manual_seed(timestep)
    x0 = torch.randn(5, 4, H, W, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 4, H, W, generator=gen, dtype=torch.float64)
    x = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    v = math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    x_prev, x0_pred = schedule.step(v, timestep, x)
    assert x_prev.dtype == torch.float64
    assert torch.allclose(x0_pred, x0, rtol=0, atol=1e-12)
    assert torch.allclose(x_prev, math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps, rtol=0, atol=1e-12)
    if timestep == 999:  # pure noise: the model sees only noise and v = -x0
        assert a == 0.0 and torch.equal(x0_pred, -v)


# ---------------------------------------------------------------- context windows

def official_uniform(step, num_steps, num_frames, context_size, context_stride, context_overlap, closed_loop=True):
    """animatediff-cli-prompt-travel's `uniform` (Champ/Moore `pipelines/context.py`), in plain Python."""
    def ordered_halving(val):
        return int(f"{val:064b}"[::-1], 2) / (1 << 64)

    if num_frames <= context_size:
        yield list(range(num_frames))
        return
    context_stride = min(context_stride, int(math.ceil(math.log2(num_frames / context_size))) + 1)
    for context_step in [1 << s for s in range(context_stride)]:
        pad = int(round(num_frames * ordered_halving(step)))
        for j in range(int(ordered_halving(step) * context_step) + pad,
                       num_frames + pad + (0 if closed_loop else -context_overlap),
                       context_size * context_step - context_overlap):
            yield [e % num_frames for e in range(j, j + context_size * context_step, context_step)]


@pytest.mark.parametrize("size,overlap", [(24, 4), (16, 4), (8, 2), (32, 0)])
def test_closed_loop_windows_are_the_official_ones(size, overlap):
    for frames in range(1, 131):
        # the pipelines' call: scheduler(0, num_inference_steps, F, context_frames, context_stride=1, overlap)
        expected = list(official_uniform(0, 20, frames, size, 1, overlap))
        assert context_windows(frames, size, overlap, closed_loop=True) == expected, frames
    assert context_windows(100)[-1] == list(range(80, 100)) + [0, 1, 2, 3]


@pytest.mark.parametrize("size,overlap", [(24, 4), (16, 4), (8, 2), (32, 0), (5, 4)])
def test_open_loop_windows_never_wrap(size, overlap):
    for frames in range(1, 131):
        windows = context_windows(frames, size, overlap, closed_loop=False)
        assert windows[0][0] == 0 and windows[-1][-1] == frames - 1
        covered = sorted({f for w in windows for f in w})
        assert covered == list(range(frames))
        for w in windows:
            assert w == list(range(w[0], w[0] + len(w))) and len(w) == min(size, frames)
        for a, b in zip(windows, windows[1:]):
            assert a[0] < b[0] and a[-1] - b[0] + 1 >= overlap
        if frames > size:  # as few windows as the stride allows
            assert len(windows) == math.ceil((frames - overlap) / (size - overlap))


def test_context_errors():
    with pytest.raises(MarionetteError, match="32"):
        context_windows(40, 33, 4)
    with pytest.raises(MarionetteError, match="overlap"):
        context_windows(40, 24, 24)


# ---------------------------------------------------------------- the loop

class FakeDenoiser:
    """A UNet3D-shaped function: mixes channels, couples the frames of a window (as the motion module
    does), depends on the timestep, the branch and per-frame guidance; records its calls."""

    def __init__(self, frames, dtype=torch.float32):
        gen = torch.Generator().manual_seed(3)
        self.mix = torch.randn(4, 4, generator=gen, dtype=dtype) * 0.5
        self.guidance = torch.randn(frames, 1, H, W, generator=gen, dtype=dtype) * 0.3
        self.reference = torch.randn(4, H, W, generator=gen, dtype=dtype) * 0.2
        self.calls = []

    def raw(self, x, t, frames, conditional):
        out = torch.einsum("oc,fchw->fohw", self.mix, x)
        out = torch.tanh(out + 0.4 * out.mean(dim=0, keepdim=True)) * (1 + t / 1000)
        out = out + self.guidance[frames]  # guidance in both branches
        return out + self.reference if conditional else out

    def __call__(self, x, t, frames, conditional):
        self.calls.append((len(frames), int(t), bool(conditional), x.dtype))
        return self.raw(x.to(self.mix.dtype), t, frames.tolist(), conditional)


def official_loop(fake, settings, frames, generator_seed):
    """The official loop in its own layout (1, 4, F, h, w) with diffusers' scheduler and its noise call:
    every window runs the CFG-doubled batch [uncond, cond], predictions summed with a counter, averaged,
    then CFG, then `scheduler.step`."""
    scheduler = official_scheduler(settings.beta_schedule)
    scheduler.set_timesteps(settings.steps)
    generator = torch.Generator().manual_seed(generator_seed)
    latents = randn_tensor((1, 4, frames, H, W), generator=generator, dtype=torch.float32)
    latents = latents * scheduler.init_noise_sigma
    cfg = settings.cfg > 1.0
    windows = list(official_uniform(0, settings.steps, frames, settings.context_frames, 1, settings.context_overlap))
    for t in scheduler.timesteps:
        noise_pred = torch.zeros((2 if cfg else 1, *latents.shape[1:]))
        counter = torch.zeros((1, 1, frames, 1, 1))
        for c in windows:
            model_in = latents[:, :, c].repeat(2 if cfg else 1, 1, 1, 1, 1)
            branches = [False, True] if cfg else [True]
            pred = torch.stack([fake.raw(model_in[i].permute(1, 0, 2, 3), int(t), c, b).permute(1, 0, 2, 3)
                                for i, b in enumerate(branches)])
            noise_pred[:, :, c] = noise_pred[:, :, c] + pred
            counter[:, :, c] = counter[:, :, c] + 1
        noise_pred = noise_pred / counter  # (the official code divides only when cfg; one window: same)
        if cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + settings.cfg * (text - uncond)
        latents = scheduler.step(noise_pred, t, latents).prev_sample
    return latents[0].permute(1, 0, 2, 3)


@pytest.mark.parametrize("frames,cfg,beta", [(30, 3.5, "linear"), (53, 2.0, "scaled_linear"), (7, 3.5, "linear"),
                                             (30, 1.0, "linear")])
def test_loop_matches_the_official_structure(frames, cfg, beta):
    settings = SD15SamplerSettings(steps=6, cfg=cfg, beta_schedule=beta, context_frames=8, context_overlap=2)
    fake = FakeDenoiser(frames)
    noise = start_noise(frames, (H, W), seeded_generator(11))
    ours = sample(fake, noise, settings, dtype=torch.float32)
    theirs = official_loop(fake, settings, frames, 11)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    windows = len(context_windows(frames, 8, 2))
    assert len(fake.calls) == settings.steps * windows * (2 if cfg > 1 else 1)


def test_loop_in_float64_matches_a_plain_rederivation():
    """float64 throughout: the loop against sums, averages, CFG and DDIM written out by hand (<= 1e-10)."""
    frames, settings = 13, SD15SamplerSettings(steps=4, cfg=3.5, context_frames=6, context_overlap=2)
    fake = FakeDenoiser(frames, torch.float64)
    noise = torch.randn(frames, 4, H, W, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = sample(fake, noise, settings, dtype=torch.float64)
    bar = alphas_cumprod("linear").tolist()
    windows = list(official_uniform(0, 4, frames, 6, 1, 2))
    x = noise.clone()
    for t in [999, 749, 499, 249]:
        sums = {b: torch.zeros_like(x) for b in (False, True)}
        counts = [0] * frames
        for c in windows:
            for b in (False, True):
                out = fake.raw(x[c], t, c, b)
                for k, f in enumerate(c):
                    sums[b][f] += out[k]
            for f in c:
                counts[f] += 1
        n = torch.tensor(counts, dtype=torch.float64).view(-1, 1, 1, 1)
        v = sums[False] / n + 3.5 * (sums[True] / n - sums[False] / n)
        a, a_prev = bar[t], (bar[t - 250] if t - 250 >= 0 else 1.0)
        x0 = a ** 0.5 * x - (1 - a) ** 0.5 * v
        eps = a ** 0.5 * v + (1 - a) ** 0.5 * x
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    assert torch.allclose(ours, x, rtol=0, atol=1e-10)


def test_start_noise_is_the_official_draw():
    for dtype in (torch.float32, torch.float16):
        ours = start_noise(30, (H, W), seeded_generator(42), dtype)
        theirs = randn_tensor((1, 4, 30, H, W), generator=torch.manual_seed(42), dtype=dtype)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, theirs[0].permute(1, 0, 2, 3).float())


def test_callbacks_cancel_and_model_dtype():
    frames, settings = 30, SD15SamplerSettings(steps=3, context_frames=8, context_overlap=2)
    windows = len(context_windows(frames, 8, 2))
    fake, steps, window_calls = FakeDenoiser(frames), [], []
    noise = start_noise(frames, (H, W), seeded_generator(0))
    sample(lambda x, t, f, c: fake(x, t, f, c).float(), noise, settings, dtype=torch.bfloat16,
           on_step=lambda d, n, x0: steps.append((d, n, tuple(x0.shape))),
           on_window=lambda d, n: window_calls.append((d, n)))
    assert steps == [(i, 3, (frames, 4, H, W)) for i in (1, 2, 3)]
    assert window_calls == [(i, 3 * windows) for i in range(1, 3 * windows + 1)]
    assert {dtype for *_, dtype in fake.calls} == {torch.bfloat16}

    class Stop(Exception):
        pass

    seen = []

    def check():
        seen.append(1)
        if len(seen) == 5:
            raise Stop

    with pytest.raises(Stop):
        sample(FakeDenoiser(frames), noise, settings, dtype=torch.float32, check=check)


def test_seed_drives_the_noise():
    a = start_noise(10, (H, W), seeded_generator(1))
    b = start_noise(10, (H, W), seeded_generator(2))
    assert not torch.equal(a, b) and torch.equal(a, start_noise(10, (H, W), seeded_generator(1)))


@pytest.mark.parametrize("kwargs,match", [({"steps": 0}, "steps"), ({"cfg": -1.0}, "cfg"),
                                          ({"beta_schedule": "sqrt_linear"}, "beta schedule"),
                                          ({"context_frames": 40}, "32"), ({"seed": -1}, "seed")])
def test_settings_errors(kwargs, match):
    with pytest.raises(MarionetteError, match=match):
        SD15SamplerSettings(**kwargs)


def test_presets():
    assert SD15SamplerSettings.preset("champ").steps == 20
    moore = SD15SamplerSettings.preset("animate_anyone")
    assert (moore.steps, moore.cfg, moore.context_frames, moore.context_overlap) == (30, 3.5, 24, 4)
    assert not SD15SamplerSettings(cfg=1.0).uses_cfg and not SD15SamplerSettings(cfg=0.5).uses_cfg
    assert np.isclose(SD15SamplerSettings().cfg, 3.5)
