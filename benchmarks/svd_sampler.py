"""Sampler overhead: wall time of `sample` against the bare UNet calls it makes (same inputs, same count).

    python benchmarks/svd_sampler.py [--frames 16] [--tile 8] [--overlap 4] [--steps 10] [--latent 16]
                                     [--cfg 3.0] [--repeat 3] [--threads 1]

Runs the tiny SVD UNet (`tiny_unet_config`) with a PoseNet residual on CPU. The UNet inputs of one
`sample` run are recorded, then `sample` and a plain replay of those recorded calls are timed alternately
(best of --repeat each); the ratio is what the sampler's own work (scaling, windows, CFG, fusion, Euler)
adds on top of the network. Goal: <= 1.05x.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)


class Recorder:
    """Passes calls through to the UNet, keeping a copy of each call's inputs while `recording`."""

    def __init__(self, unet):
        self.unet, self.recording, self.calls = unet, False, []

    def __call__(self, sample, timestep, **kwargs):
        if self.recording:
            self.calls.append((sample.clone(), timestep.clone(), dict(kwargs)))
        return self.unet(sample, timestep, **kwargs)


def best_of(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--tile", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--latent", type=int, default=16, help="latent height and width (pixels / 8)")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from marionette.models.svd.configs import tiny_unet_config
    from marionette.models.mimicmotion.pose_net import PoseNet
    from marionette.models.svd.sampler import SamplerSettings, sample
    from marionette.models.svd.unet import build_unet

    torch.manual_seed(0)
    config = tiny_unet_config()
    unet = Recorder(build_unet(config))
    pose_net = PoseNet(out_channels=config["block_out_channels"][0])
    size = args.latent
    with torch.no_grad():
        pose = pose_net(torch.rand(args.frames, 3, 8 * size, 8 * size) * 2 - 1)
    cond = torch.randn(1, 1, config["cross_attention_dim"])
    ref = torch.randn(4, size, size)
    settings = SamplerSettings(steps=args.steps, cfg_min=1.0, cfg_max=args.cfg, tile_size=args.tile,
                               tile_overlap=args.overlap)

    def run_sampler():
        return sample(unet, cond, torch.zeros_like(cond), ref, pose, settings)

    def run_bare():
        with torch.no_grad():
            for sample_in, timestep, kwargs in unet.calls:
                unet.unet(sample_in, timestep, **kwargs)

    unet.recording = True
    run_sampler()
    unet.recording = False
    sampler_times, bare_times = [], []
    for _ in range(args.repeat):  # alternate so drift in machine load hits both alike
        bare_times += best_of(run_bare, 1)
        sampler_times += best_of(run_sampler, 1)
    t_sampler, t_bare = min(sampler_times), min(bare_times)
    print(f"tiny SVD UNet on CPU ({args.threads} thread(s)): {args.frames} frames, tile {args.tile}, "
          f"overlap {args.overlap}, {args.steps} steps, CFG 1->{args.cfg}, latent {size}x{size}")
    print(f"UNet calls per run: {len(unet.calls)}")
    print(f"{'sample()':<22}{t_sampler:9.3f} s")
    print(f"{'bare UNet calls':<22}{t_bare:9.3f} s")
    print(f"{'ratio':<22}{t_sampler / t_bare:9.3f} x  (goal <= 1.05)")


if __name__ == "__main__":
    main()
