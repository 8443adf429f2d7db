"""The trainer: EDM objective, two gloo processes == one process, bit-exact resume, Ctrl-C, learning.

A tiny prepared dataset (rendered people through our own pose / body / render stages) and a random
tiny autoencoder are made once per session; the runs use the tiny VividPose (`training_probe.tiny_task`).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from harness import ROOT
from marionette.models.errors import MarionetteError
from marionette.models.pipelines.svd_tiny import TINY_VAE
from marionette.models.training.autoencoder import load_autoencoder, save_autoencoder, signed_pixels
from marionette.models.training.edm import edm_loss, noise_and_sigma, sample_generator
from marionette.models.training.engine import TrainSettings, global_batch, micro_slice, train

PROBE = os.path.join(os.path.dirname(__file__), "training_probe.py")
sys.path.insert(0, os.path.dirname(__file__))
from training_probe import tiny_task  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    pytest.importorskip("anny")
    from marionette.models.synthetic.video_set import render_video_set
    from marionette.models.training.dataset import prepare_dataset
    root = tmp_path_factory.mktemp("training")
    render_video_set(root / "videos", train=2, heldout=1, width=96, height=128, frames=10, seed=3)
    index = prepare_dataset(root / "videos", root / "data", size=(32, 48), progress=lambda *a: None)
    assert len(index["clips"]) == 3, index["skipped"]
    from diffusers import AutoencoderKLTemporalDecoder
    torch.manual_seed(0)
    save_autoencoder(AutoencoderKLTemporalDecoder(**TINY_VAE), str(root / "ae.safetensors"), 2.0)
    return str(root / "data"), str(root / "ae.safetensors")


def _probe(tiny_data, out, processes=1, **options):
    data, ae = tiny_data
    args = [PROBE, "--data", data, "--autoencoder", ae, "--out", str(out)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29517"] + args
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable] + args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return _losses(out)


def _losses(out):
    with open(os.path.join(out, "log.csv")) as f:
        return [float(line.split(",")[1]) for line in f.read().splitlines()[1:]]


# ------------------------------------------------------------------------------------------ objective
def test_edm_loss_is_the_v_prediction_regression():
    """Independent derivation: with sigma_data = 1, lambda(sigma) c_out^2 = 1, so the weighted EDM loss is
    |F - v|^2 with v = (eps - sigma x0) / sqrt(sigma^2 + 1)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 5, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    prediction = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1, 1)
    v = (eps - s * x0) / (s ** 2 + 1).sqrt()
    expected = (prediction - v).square().flatten(1).mean(1)
    ours = edm_loss(prediction, x0 + s * eps, x0, sigma)
    assert torch.allclose(ours.double(), expected, rtol=1e-5), (ours, expected)


def test_regional_weights_average_the_error_with_those_weights():
    """--person-weight: each latent element's squared error counts by its weight, divided by the weights'
    sum (so even weights, at any level, give the plain loss); derived here on numbers drawn apart."""
    g = torch.Generator().manual_seed(1)
    x0, eps, prediction = (torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.3, 7.0], dtype=torch.float64)
    regions = 1.0 + 4.0 * torch.rand(2, 3, 1, 5, 6, generator=g, dtype=torch.float64)
    s = sigma.view(-1, 1, 1, 1, 1)
    v = (eps - s * x0) / (s ** 2 + 1).sqrt()
    for i in range(2):
        w = regions[i].expand(3, 4, 5, 6).numpy()
        expected = float((w * (prediction[i] - v[i]).square().numpy()).sum() / w.sum())
        ours = edm_loss(prediction, x0 + s * eps, x0, sigma, regions)[i]
        assert abs(float(ours) - expected) < 1e-5 * expected
    plain = edm_loss(prediction, x0 + s * eps, x0, sigma)
    assert torch.allclose(edm_loss(prediction, x0 + s * eps, x0, sigma, torch.full((1,), 2.5)), plain, rtol=1e-6)


def test_noise_levels_are_log_normal_and_per_sample():
    sigmas = torch.stack([noise_and_sigma((1,), sample_generator(k))[1] for k in range(4000)])
    assert abs(sigmas.log().mean() - 0.7) < 0.08 and abs(sigmas.log().std() - 1.6) < 0.08
    a, b = noise_and_sigma((3,), sample_generator(7)), noise_and_sigma((3,), sample_generator(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_global_batch_is_split_over_processes_and_micro_steps_without_overlap():
    batch = global_batch(10, seed=1, step=3, total=8)
    assert len(batch) == 8 and len(set(batch)) <= 8
    parts = [p for micro in range(2) for rank in range(2) for p in micro_slice(micro, rank, 2, 2)]
    assert sorted(parts) == list(range(8))
    # epochs: the first 10 positions are a permutation of the dataset
    assert sorted(global_batch(10, 1, 0, 5) + global_batch(10, 1, 1, 5)) == list(range(10))


# --------------------------------------------------------------------------------------- distributed
def test_two_gloo_processes_give_the_loss_and_gradients_of_one(tiny_data, tmp_path):
    one = _probe(tiny_data, tmp_path / "one", batch_size=2, steps=2)
    two = _probe(tiny_data, tmp_path / "two", processes=2, batch_size=1, steps=2)
    assert len(one) == len(two) == 2
    assert max(abs(a - b) for a, b in zip(one, two)) <= 1e-6, (one, two)
    g1, g2 = load_file(tmp_path / "one" / "gradients.safetensors"), load_file(tmp_path / "two" / "gradients.safetensors")
    assert set(g1) == set(g2) and len(g1) > 50
    worst = max(float((g1[k] - g2[k]).abs().max()) for k in g1)
    assert worst <= 1e-6, worst
    assert any(float(g.abs().max()) > 1e-4 for g in g1.values())  # the gradients are not all zero


def test_gradient_accumulation_equals_the_larger_batch(tiny_data, tmp_path):
    big = _probe(tiny_data, tmp_path / "big", batch_size=2, steps=1)
    accumulated = _probe(tiny_data, tmp_path / "acc", batch_size=1, grad_accum=2, steps=1)
    assert abs(big[0] - accumulated[0]) <= 1e-6
    g1, g2 = load_file(tmp_path / "big" / "gradients.safetensors"), load_file(tmp_path / "acc" / "gradients.safetensors")
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-6


def test_gradient_checkpointing_changes_nothing(tiny_data, tmp_path):
    plain = _probe(tiny_data, tmp_path / "plain", steps=1)
    checkpointed = _probe(tiny_data, tmp_path / "ckpt", steps=1, checkpointing=True)
    assert abs(plain[0] - checkpointed[0]) <= 1e-6
    g1, g2 = load_file(tmp_path / "plain" / "gradients.safetensors"), load_file(tmp_path / "ckpt" / "gradients.safetensors")
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) <= 1e-6


# ------------------------------------------------------------------------------------------ resume
def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tiny_data, tmp_path):
    whole = _probe(tiny_data, tmp_path / "whole", steps=4)
    _probe(tiny_data, tmp_path / "split", steps=2)
    resumed = _probe(tiny_data, tmp_path / "split", steps=4)
    assert resumed == whole
    for name in ("trainable.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "whole" / "state" / name), load_file(tmp_path / "split" / "state" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = load_file(tmp_path / "whole" / "vividpose.safetensors"), load_file(tmp_path / "split" / "vividpose.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_run(tiny_data, tmp_path):
    data, ae = tiny_data
    settings = TrainSettings(output_dir=str(tmp_path), steps=1, batch_size=1, save_every=1000)
    train(tiny_task(data, ae), settings, progress=False)
    with pytest.raises(MarionetteError, match="another run"):
        train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path), steps=2, batch_size=2), progress=False)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    settings = TrainSettings(output_dir="unused", steps=110, learning_rate=2e-3, warmup_steps=10, lr_schedule="cosine")
    rates = [settings.learning_rate_at(step) for step in range(settings.steps + 1)]
    assert rates[:10] == pytest.approx([2e-3 * (i + 1) / 10 for i in range(10)])
    assert rates[10] == pytest.approx(2e-3) and rates[60] == pytest.approx(1e-3) and rates[110] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert TrainSettings(output_dir="unused", steps=110, learning_rate=2e-3).learning_rate_at(109) == 2e-3
    with pytest.raises(MarionetteError, match="schedule"):
        TrainSettings(output_dir="unused", lr_schedule="linear")


def test_a_state_saved_before_the_schedule_option_resumes_as_constant(tiny_data, tmp_path):
    data, ae = tiny_data
    train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path), steps=1, batch_size=1), progress=False)
    state = tmp_path / "state" / "state.json"
    saved = json.loads(state.read_text())
    del saved["run"]["lr_schedule"]
    state.write_text(json.dumps(saved))
    assert train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path), steps=2, batch_size=1),
                 progress=False)["step"] == 2
    with pytest.raises(MarionetteError, match="another run"):
        train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path), steps=3, batch_size=1, lr_schedule="cosine"),
              progress=False)


def _interrupted_autoencoder_run(data, out, logged: int, ignore_sigint: bool = False):
    """Starts the autoencoder command, sends SIGINT after `logged` steps; returns (command, env, stderr)."""
    command = [sys.executable, "-m", "models.training", "autoencoder", "--data", data, "--output-dir", str(out),
               "--steps", "400", "--batch-size", "1", "--frames", "2", "--validate-every", "0", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ignore)
    log = out / "log.csv"
    deadline = time.time() + 300
    while (not log.exists() or len(log.read_text().splitlines()) <= logged) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    return command, env, err


def test_ctrl_c_saves_the_last_step_and_the_same_command_resumes(tiny_data, tmp_path):
    data, ae = tiny_data
    out = tmp_path / "run"
    command, env, err = _interrupted_autoencoder_run(data, out, logged=3)
    assert "interrupted" in err
    import json
    saved = json.loads((out / "state" / "state.json").read_text())["step"]
    assert saved >= 3 and saved == len(_losses(out))
    command[command.index("400")] = str(saved + 2)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed at step {saved}" in done.stdout + done.stderr
    assert len(_losses(out)) == saved + 2
    vae = load_autoencoder(str(out / "autoencoder.safetensors"))
    assert vae.config.scaling_factor > 0


# ----------------------------------------------------------------------------------------- learning
def test_a_few_steps_lower_the_loss_on_fixed_noise(tiny_data, tmp_path):
    from accelerate.utils import set_seed
    data, ae = tiny_data
    task = tiny_task(data, ae, drop=0.0)
    settings = TrainSettings(output_dir=str(tmp_path), steps=30, batch_size=2, learning_rate=2e-3, ema_decay=0.0,
                             save_every=1000, seed=5)
    set_seed(settings.seed)
    before = task.build()
    dataset = task.dataset()
    from marionette.models.training.engine import collate
    batch = collate([dataset[i] for i in range(len(dataset))])
    keys = list(range(100, 100 + len(dataset)))

    def fixed_loss(module):
        with torch.no_grad(), module.model.reference_attention(None):
            return float(task.loss(module, batch, keys, False).mean())

    initial = fixed_loss(before)
    trained = train(task, settings, progress=False)["module"]
    assert fixed_loss(trained) < 0.8 * initial, (initial, fixed_loss(trained))


# ---------------------------------------------------------------------------------------- evaluation
def test_evaluate_compares_the_model_with_copying_the_reference_and_the_untrained_model(tiny_data, tmp_path):
    from marionette.models.training.evaluate import METHODS, evaluate_checkpoint, table
    data, ae = tiny_data
    export = train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path / "run"), steps=1, batch_size=1),
                   progress=False)["export"]
    summary = evaluate_checkpoint(export, data, split="heldout", frames=5, steps=2, out=str(tmp_path / "eval"),
                                  progress=lambda *a: None)
    assert summary["clips"] == ["heldout_000"]
    for method in METHODS:
        assert set(summary[method]) == {"whole", "inside", "outside"}  # the dataset has person masks
    copy = summary["copy reference"]["whole"]
    assert copy["psnr"] > summary["untrained"]["whole"]["psnr"]  # the untrained model makes noise
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "heldout_000.png").exists()
    assert "| copy reference | inside |" in table(summary)


def test_a_background_run_whose_shell_ignores_sigint_still_saves_on_kill_int(tiny_data, tmp_path):
    """Shells start background jobs with SIGINT ignored; `kill -INT` must still save and stop the run."""
    _interrupted_autoencoder_run(tiny_data[0], tmp_path / "run", logged=2, ignore_sigint=True)
    assert (tmp_path / "run" / "state" / "state.json").exists()


def test_training_curve_picture_averages_the_log(tmp_path):
    from PIL import Image
    from marionette.models.training.curve import averaged, plot_curve, read_log, read_logs
    log = tmp_path / "log.csv"
    log.write_text("step,loss,lr,samples_per_s,elapsed_s\n" + "".join(
        f"{s},{1.0 / s + (0.5 if s % 2 else 0.0)},1e-4,1.0,{s}\n" for s in range(1, 401)))
    steps, losses = read_log(str(log))
    xs, ys = averaged(steps, losses, points=100)
    assert len(xs) == 100 and xs[-1] == 400 and abs(ys[-1] - (0.25 + 1 / 399.5)) < 0.01  # the odd-step spikes averaged
    plot_curve(str(log), str(tmp_path / "curve.png"))
    picture = Image.open(tmp_path / "curve.png")
    assert picture.size == (640, 300) and len(picture.getcolors(1 << 20)) > 2
    more = tmp_path / "continued.csv"
    more.write_text("step,loss,lr,samples_per_s,elapsed_s\n1,0.2,1e-4,1.0,1\n2,0.1,1e-4,1.0,2\n")
    steps, losses = read_logs([str(log), str(more)])
    assert steps[-3:].tolist() == [400, 401, 402] and losses[-2:].tolist() == [0.2, 0.1]
    plot_curve([str(log), str(more)], str(tmp_path / "both.png"))
    assert Image.open(tmp_path / "both.png").size == (640, 300)


def test_bf16_autocast_and_validation_videos(tiny_data, tmp_path):
    """bf16 mixed precision runs (CPU autocast here, GPU the same through accelerate; in its own process, as
    accelerate fixes the precision once per process) and the validation video (truth | generated, EMA
    weights) is written every --validate-every steps."""
    losses = _probe(tiny_data, tmp_path, steps=2, batch_size=1, mixed_precision="bf16", validate_every=2)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "validation" / "vividpose_000002.mp4").stat().st_size > 0
    assert (tmp_path / "validation" / "vividpose_000002.png").exists()


def test_ema_warms_up_then_follows_the_decay():
    from marionette.models.training.ema import EMA
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"p": p}, decay=0.9)
    assert ema.rate(0) == 0.1 and ema.rate(1000) == 0.9
    with torch.no_grad():
        p.fill_(1.0)
    ema.update({"p": p}, step=0)  # rate 0.1: 90 % of the new value
    assert torch.allclose(ema.shadow["p"], torch.full((3,), 0.9))
    with ema.applied({"p": p}):
        assert torch.allclose(p, torch.full((3,), 0.9))
    assert torch.equal(p, torch.ones(3))


def test_decoder_only_fine_tuning_keeps_the_latent_space(tiny_data, tmp_path):
    """--decoder-only from --init: the encoder (so every latent a VividPose was trained on) stays
    bit-identical, the decoder learns."""
    from marionette.models.training.autoencoder import AutoencoderTask, AutoencoderTaskConfig
    data, ae = tiny_data
    task = AutoencoderTask(AutoencoderTaskConfig(data=data, frames=4, init=ae, decoder_only=True))
    export = train(task, TrainSettings(output_dir=str(tmp_path), steps=2, batch_size=1, learning_rate=1e-3,
                                       ema_decay=0.0), progress=False)["export"]
    assert load_autoencoder(export).config.scaling_factor == load_autoencoder(ae).config.scaling_factor
    before, after = load_autoencoder(ae).state_dict(), load_autoencoder(export).state_dict()
    changed = {name for name, value in before.items() if not torch.equal(value, after[name])}
    assert changed and all(name.startswith("decoder.") for name in changed), sorted(changed)[:5]
    assert len(changed) > 0.8 * sum(name.startswith("decoder.") for name in before)


def test_an_autoencoder_with_more_latent_channels_trains_a_vividpose_that_samples(tiny_data, tmp_path):
    """--latent-channels 8: the autoencoder's latents, the VividPose UNet's input (noisy + reference) and
    output, its ReferenceNet and its latent-space pose features all follow the VAE; the export samples."""
    from marionette.models.pipelines.vividpose import load_vividpose_animation
    from marionette.models.training.autoencoder import AutoencoderTask, AutoencoderTaskConfig
    from marionette.models.training.dataset import load_clip
    from marionette.models.training.validation import reconstruct_clip
    data, _ = tiny_data
    ae_task = AutoencoderTask(AutoencoderTaskConfig(data=data, frames=2, latent_channels=8))
    ae = train(ae_task, TrainSettings(output_dir=str(tmp_path / "ae"), steps=1, batch_size=1, ema_decay=0.0),
               progress=False)["export"]
    assert load_autoencoder(ae).config.latent_channels == 8
    export = train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path / "vp"), steps=1, batch_size=1),
                   progress=False)["export"]
    net = load_vividpose_animation(export, None, torch.float32)
    unet = net.model.config.unet
    assert (unet["in_channels"], unet["out_channels"]) == (16, 8)
    assert net.model.config.reference_net["in_channels"] == 8 and net.model.config.pose_out_channels == 8
    video = reconstruct_clip(net, load_clip(data, "heldout_000"), 3, steps=2)
    assert video.shape == (3, 48, 32, 3) and torch.isfinite(video).all()


def test_the_patch_latent_is_the_training_patches_pca_and_trains_a_vividpose(tiny_data, tmp_path):
    """`patch-latent`: the K principal components of the training frames' 8x8 patches (checked against numpy's
    SVD of the patches cut out independently), each channel scaled to unit variance; `vividpose --autoencoder` takes
    the file like a trained autoencoder's, the UNet and pose features follow its 16 channels, the export
    bundles it and samples."""
    import numpy as np
    from marionette.models.pipelines.vividpose import load_vividpose_animation
    from marionette.models.training.__main__ import main
    from marionette.models.training.dataset import load_clip, read_index
    from marionette.models.training.patch_latent import FRAME_STRIDE
    from marionette.models.training.validation import reconstruct_clip
    data, _ = tiny_data
    path = str(tmp_path / "patch.safetensors")
    assert main(["patch-latent", "--data", data, "--output", path, "--components", "16"]) == 0
    latent = load_autoencoder(path)
    index = read_index(data)
    frames = np.concatenate([load_clip(data, n)["frames"].numpy()[::FRAME_STRIDE] for n in index["clips"]
                             if index["splits"][n] == "train"]).astype(np.float64) / 127.5 - 1
    n, h, w, _ = frames.shape
    patches = frames.reshape(n, h // 8, 8, w // 8, 8, 3).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 192)  # (c, i, j)
    centred = patches - patches.mean(0)
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    basis = latent.basis.detach().double().numpy().reshape(16, 192)
    assert np.allclose(basis @ basis.T, np.eye(16), atol=1e-6)
    assert np.allclose(basis.T @ basis, right[:16].T @ right[:16], atol=1e-5)   # the same subspace
    assert np.allclose(latent.mean.detach().numpy().ravel(), patches.mean(0), atol=1e-6)
    stds = singular[:16] / np.sqrt(len(patches) - 1)
    assert np.allclose(latent.scale.detach().double().numpy(), stds, rtol=1e-5)
    assert latent.config.scaling_factor == 1.0
    export = train(tiny_task(data, path), TrainSettings(output_dir=str(tmp_path / "vp"), steps=1, batch_size=1),
                   progress=False)["export"]
    net = load_vividpose_animation(export, None, torch.float32)
    unet = net.model.config.unet
    assert (unet["in_channels"], unet["out_channels"]) == (32, 16) and net.model.config.pose_out_channels == 16
    assert "16 principal components of 8x8 patches" in net.model.config.extras["vae"]
    video = reconstruct_clip(net, load_clip(data, "heldout_000"), 3, steps=2)
    assert video.shape == (3, 48, 32, 3) and torch.isfinite(video).all()


def test_init_continues_a_small_model_from_its_export(tiny_data, tmp_path):
    """--init FILE: the continued run starts from exactly the export's weights (model and image encoder)
    with its bundled autoencoder; other reference frames than the first and reordered colours train too."""
    from marionette.models.training.vividpose_task import VividPoseTask, VividPoseTaskConfig
    from marionette.models.vividpose.checkpoint import load_companions, load_vividpose
    data, ae = tiny_data
    export = train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path / "first"), steps=1, batch_size=1),
                   progress=False)["export"]
    task = VividPoseTask(VividPoseTaskConfig(data=data, init=export, frames=4, reference_frames=(0, 5),
                                             colour_orders=2))
    module = task.build()
    saved = load_vividpose(export).state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in module.model.state_dict().items())
    encoder = load_companions(export)["image_encoder"].state_dict()
    assert all(torch.equal(value, encoder[name]) for name, value in module.image_encoder.state_dict().items())
    assert all(p.requires_grad for p in module.model.parameters()) and module.model.training
    assert not any(p.requires_grad for p in module.vae.parameters())
    windows = task.dataset()
    assert {(int(windows[i]["reference_index"]), int(windows[i]["colour_order"])) for i in range(len(windows))} \
        == {(0, 0), (5, 0), (0, 1), (5, 1)}
    item = windows[len(windows) - 1]   # colour order 1: its latents are those of its reordered frames
    latent = module.vae.encode(signed_pixels(item["frames"])).latent_dist.mode()
    assert torch.allclose(item["latents"], latent, atol=1e-5)
    result = train(task, TrainSettings(output_dir=str(tmp_path / "more"), steps=1, batch_size=1), progress=False)
    assert load_vividpose(result["export"]).config.extras["init"] == os.path.basename(export)
    with pytest.raises(MarionetteError, match="exactly one"):
        VividPoseTaskConfig(data=data, init=export, svd=str(tmp_path))


def test_a_decoder_fine_tuned_from_a_small_models_autoencoder_replaces_it(tiny_data, tmp_path):
    """`autoencoder --init MODEL.safetensors --decoder-only` starts from the autoencoder a small VividPose
    bundles; `vividpose --init MODEL --autoencoder NEW` then continues the model with that decoder (same
    encoder, so the same latents); an autoencoder that encodes differently is refused."""
    from marionette.models.training.autoencoder import AutoencoderTask, AutoencoderTaskConfig
    from marionette.models.training.vividpose_task import VividPoseTask, VividPoseTaskConfig
    from marionette.models.vividpose.checkpoint import load_companions
    data, ae = tiny_data
    model = train(tiny_task(data, ae), TrainSettings(output_dir=str(tmp_path / "model"), steps=1, batch_size=1),
                  progress=False)["export"]
    bundled = load_companions(model)["vae"].state_dict()
    assert all(torch.equal(v, bundled[k]) for k, v in load_autoencoder(model).state_dict().items())
    decoder = AutoencoderTask(AutoencoderTaskConfig(data=data, frames=2, init=model, decoder_only=True))
    tuned = train(decoder, TrainSettings(output_dir=str(tmp_path / "decoder"), steps=1, batch_size=1,
                                         learning_rate=1e-3, ema_decay=0.0), progress=False)["export"]
    task = VividPoseTask(VividPoseTaskConfig(data=data, init=model, autoencoder=tuned, frames=4))
    module = task.build()
    new = load_autoencoder(tuned).state_dict()
    assert all(torch.equal(v, new[k]) for k, v in module.vae.state_dict().items())
    assert any(not torch.equal(new[k], bundled[k]) for k in new if k.startswith("decoder."))
    from diffusers import AutoencoderKLTemporalDecoder
    torch.manual_seed(1)
    other = str(tmp_path / "other.safetensors")
    save_autoencoder(AutoencoderKLTemporalDecoder(**TINY_VAE), other, load_autoencoder(ae).config.scaling_factor)
    with pytest.raises(MarionetteError, match="encodes differently"):
        VividPoseTask(VividPoseTaskConfig(data=data, init=model, autoencoder=other, frames=4)).build()


def test_stretch_crops_each_window_alike_with_a_box_drawn_from_its_key(tiny_data):
    """--stretch: a sample's frames (so the latents the loss regresses), reference, renders and skeletons are
    all cropped with one box drawn from its noise key (the same in any process split, and on resume)."""
    from marionette.models.training.augment import crop_and_resize, crop_box
    from marionette.models.training.engine import collate
    from marionette.models.training.vividpose_task import VividPoseTaskConfig, encode_frames
    data, ae = tiny_data

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.seen = torch.nn.Parameter(torch.zeros(1)), None

        def forward(self, latents, reference, render, skeleton, *rest):
            self.seen = latents, reference, render, skeleton
            return torch.zeros(len(latents))

    base = tiny_task(data, ae)
    base.c = VividPoseTaskConfig(**dict(vars(base.c), stretch=1.6))
    vae = base.build().vae
    batch = collate([base.dataset()[i] for i in (0, 1)])
    spy = Spy()
    base.loss(spy, batch, [11, 12], drop=False)
    latents, reference, render, skeleton = spy.seen
    b, f, c, lh, lw = batch["latents"].shape
    h, w = batch["reference"].shape[1:3]
    for i, key in enumerate((11, 12)):
        g = sample_generator(key)
        noise_and_sigma((f, c, lh, lw), g)
        torch.randn((3, h, w), generator=g)
        box = crop_box(g, w, h, 1.6)
        assert box != (0, 0, w, h)
        assert torch.equal(reference[i], crop_and_resize(batch["reference"][i], box))
        assert torch.equal(render[i], crop_and_resize(batch["render"][i], box))
        assert torch.equal(skeleton[i], crop_and_resize(batch["skeleton"][i], box))
        frames = crop_and_resize(batch["frames"][i], box)
        assert torch.allclose(latents[i], encode_frames(vae, frames))
    base.c = VividPoseTaskConfig(**dict(vars(base.c), stretch=1.0))
    base.loss(spy, batch, [11, 12], drop=False)
    assert torch.equal(spy.seen[0], batch["latents"]) and torch.equal(spy.seen[1], batch["reference"])
    with pytest.raises(MarionetteError, match="below 1"):
        VividPoseTaskConfig(data=data, autoencoder=ae, stretch=0.5)


def test_person_weight_weighs_the_loss_by_the_masks_share_of_each_latent_cell(tiny_data):
    """--person-weight 3: the regions reaching the loss are 3 where a latent cell's pixels are all person, 1
    where none are, between by the share; cropped with the frames under --stretch; no masks -> a clear error."""
    from marionette.models.training.engine import collate
    from marionette.models.training.vividpose_task import VividPoseTaskConfig
    data, ae = tiny_data

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.regions = torch.nn.Parameter(torch.zeros(1)), None

        def forward(self, *args):
            self.regions = args[-1]
            return torch.zeros(len(args[0]))

    base = tiny_task(data, ae)
    base.build()   # the autoencoder, which encodes the stretched frames
    batch = collate([base.dataset()[i] for i in (0, 1)])
    masks = batch["mask"]
    b, f, c, lh, lw = batch["latents"].shape
    h, w = masks.shape[-2:]
    assert masks.float().mean() > 10 and (h // lh, w // lw) == (8, 8)
    spy = Spy()
    base.loss(spy, batch, [11, 12], drop=False)
    assert spy.regions is None
    base.c = VividPoseTaskConfig(**dict(vars(base.c), person_weight=3.0))
    base.loss(spy, batch, [11, 12], drop=False)
    share = (masks.float() / 255).view(b, f, lh, 8, lw, 8).mean((3, 5))   # each cell's 8x8 pixels
    assert spy.regions.shape == (b, f, 1, lh, lw)
    assert torch.allclose(spy.regions[:, :, 0], 1 + 2 * share, atol=1e-6)
    assert spy.regions.max() > 2 and spy.regions.min() == 1.0   # cells mostly person, cells of none
    base.c = VividPoseTaskConfig(**dict(vars(base.c), stretch=1.6))
    base.loss(spy, batch, [11, 12], drop=False)
    assert not torch.allclose(spy.regions[:, :, 0], 1 + 2 * share)
    with pytest.raises(MarionetteError, match="person masks"):
        base.loss(spy, {k: v for k, v in batch.items() if k != "mask"}, [11, 12], drop=False)
    with pytest.raises(MarionetteError, match="not positive"):
        VividPoseTaskConfig(data=data, autoencoder=ae, person_weight=0.0)
