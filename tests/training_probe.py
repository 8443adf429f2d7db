"""Runs a tiny VividPose training for the trainer tests, in one process or under torchrun:

    python tests/training_probe.py --data DATA --autoencoder AE --out DIR --batch-size B --steps S

Writes DIR/gradients.safetensors (the synchronised gradients of the first step, process 0) next to the
trainer's own log, state and export."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402,F401  (the `marionette` library alias)
from marionette.models.svd.configs import tiny_unet_config  # noqa: E402
from marionette.models.training.engine import TrainSettings, train  # noqa: E402
from marionette.models.training.vividpose_task import VividPoseTask, VividPoseTaskConfig  # noqa: E402


def tiny_task(data: str, autoencoder: str, frames: int = 4, drop: float = 0.3) -> VividPoseTask:
    return VividPoseTask(VividPoseTaskConfig(data=data, autoencoder=autoencoder, frames=frames, drop_probability=drop,
                                             unet=tiny_unet_config(), pose_channels=(8, 16, 16, 32), pose_heads=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--data", "--autoencoder", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--validate-every", type=int, default=0)
    a = parser.parse_args()
    torch.set_num_threads(1)
    grads = {}

    def record(step, module):
        if step == 0:
            grads.update({k: p.grad.detach().clone() for k, p in module.named_parameters()
                          if p.requires_grad and p.grad is not None})

    settings = TrainSettings(output_dir=a.out, steps=a.steps, batch_size=a.batch_size, grad_accum=a.grad_accum,
                             learning_rate=1e-3, ema_decay=0.9, save_every=1000, gradient_checkpointing=a.checkpointing,
                             mixed_precision=a.mixed_precision, validate_every=a.validate_every)
    train(tiny_task(a.data, a.autoencoder), settings, progress=False, on_gradients=record)
    if int(os.environ.get("RANK", "0")) == 0 and grads:
        from safetensors.torch import save_file
        save_file(grads, os.path.join(a.out, "gradients.safetensors"))


if __name__ == "__main__":
    main()
