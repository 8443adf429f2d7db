"""VividPose training throughput: seconds per optimizer step and samples per second of the trainer
(`models.training.engine.train`, EMA on, as a real run) for the small and the tiny model.

    python benchmarks/training_throughput.py [--steps 5] [--warmup 1] [--threads 1] [--device cpu|cuda]
                                             [--precision no|bf16|fp16] [--configs small tiny]

small: `vividpose_task.small_unet_config`, 96x128, 8 frames, batch 2, its own small autoencoder and image
encoder; small-patch: the same on a 16-channel patch latent (`patch-latent`, no autoencoder); tiny: the test
model (`tiny_unet_config`), 32x48, 4 frames, batch 2. The data are synthetic
random windows with the item layout of `ClipDataset` + `LatentWindows` (uint8 frames / renders /
skeletons / reference, float latents), so only the training itself is measured; the autoencoders are
random ones saved with `save_autoencoder`. A step's time is the time between the gradients of successive
steps (forward, backward, clipping, AdamW, EMA, data), averaged after --warmup steps.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)

# name: (unet config, pose (channels, heads), autoencoder config, width, height, frames, batch)
CONFIGS = {
    "small": ("small", None, "small", 96, 128, 8, 2),
    "small-patch": ("small", None, "patch", 96, 128, 8, 2),
    "tiny": ("tiny", ((8, 16, 16, 32), 2), "tiny", 32, 48, 4, 2),
}


class SyntheticWindows(torch.utils.data.Dataset):
    """`count` random training windows as `LatentWindows` yields them."""

    def __init__(self, count: int, frames: int, width: int, height: int, channels: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        image = lambda *shape: torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)  # noqa: E731
        self.items = [{"frames": image(frames, height, width, 3), "render": image(frames, height, width, 3),
                       "skeleton": image(frames, height, width, 3), "reference": image(height, width, 3),
                       "latents": torch.randn(frames, channels, height // 8, width // 8, generator=g),
                       "clip": torch.tensor(i), "indices": torch.arange(frames)} for i in range(count)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return dict(self.items[i])


def make_task(name: str, folder: str):
    from diffusers import AutoencoderKLTemporalDecoder

    from marionette.models.pipelines.svd_tiny import TINY_VAE
    from marionette.models.svd.configs import tiny_unet_config
    from marionette.models.training.autoencoder import SMALL_VAE, save_autoencoder
    from marionette.models.training.vividpose_task import VividPoseTask, VividPoseTaskConfig, small_unet_config
    from marionette.models.vividpose.patch_latent import PatchLatent
    unet, pose, vae, width, height, frames, batch = CONFIGS[name]
    ae = os.path.join(folder, f"{name}_ae.safetensors")
    torch.manual_seed(0)
    latent = (PatchLatent(16) if vae == "patch"
              else AutoencoderKLTemporalDecoder(**(SMALL_VAE if vae == "small" else TINY_VAE)))
    save_autoencoder(latent, ae, 1.0)
    channels, heads = pose or (None, None)
    config = VividPoseTaskConfig(data=folder, autoencoder=ae, frames=frames, drop_probability=0.1,
                                 unet=small_unet_config(frames) if unet == "small" else tiny_unet_config(),
                                 pose_channels=channels, pose_heads=heads)
    data = SyntheticWindows(4 * batch, frames, width, height, latent.config.latent_channels)

    class Task(VividPoseTask):
        def dataset(self):
            return data

    return Task(config), batch


def measure(name: str, steps: int, warmup: int, precision: str, folder: str) -> dict:
    from marionette.models.training.engine import TrainSettings, train
    task, batch = make_task(name, folder)
    stamps = []
    settings = TrainSettings(output_dir=os.path.join(folder, name), steps=warmup + steps + 1, batch_size=batch,
                             learning_rate=1e-4, ema_decay=0.999, mixed_precision=precision, save_every=10 ** 6)
    result = train(task, settings, progress=False, on_gradients=lambda step, module: stamps.append(time.perf_counter()))
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    per_step = sum(intervals) / len(intervals)
    module = result["module"]
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    _, _, _, width, height, frames, _ = CONFIGS[name]
    return {"config": name, "size": f"{width}x{height}", "frames": frames, "batch": batch,
            "trained_M": trained / 1e6, "s_per_step": per_step, "samples_per_s": batch / per_step,
            "loss": result["losses"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per config")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS))
    a = parser.parse_args()
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer takes an accelerator whenever one is visible
    elif not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if a.steps < 1 or a.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in a.configs:
            rows.append(measure(name, a.steps, a.warmup, a.precision, folder))
    device = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu, {a.threads} thread(s)"
    print(f"VividPose training throughput ({device}, precision {a.precision}, {a.steps} timed steps "
          f"after {a.warmup} warm-up)")
    print(f"{'config':<11} {'size':>8} {'frames':>6} {'batch':>5} {'trained M':>9} {'s/step':>8} {'samples/s':>9} {'last loss':>9}")
    for r in rows:
        print(f"{r['config']:<11} {r['size']:>8} {r['frames']:>6} {r['batch']:>5} {r['trained_M']:>9.2f} "
              f"{r['s_per_step']:>8.3f} {r['samples_per_s']:>9.2f} {r['loss']:>9.4f}")


if __name__ == "__main__":
    main()
