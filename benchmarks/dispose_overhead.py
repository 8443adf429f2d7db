"""DisPose's cost per sampling step relative to plain MimicMotion: the full-size SVD-xt UNet against the
same UNet driven by the full-size DisPose ControlNet (motion fields + keypoint features), random weights.

    python benchmarks/dispose_overhead.py [--frames 3] [--latent 16] [--steps 2] [--threads 2] [--repeat 2]

Both run through `sample` with CFG 2 (two UNet calls per window, each with a ControlNet pass for DisPose),
interleaved so machine load hits both alike. The paper reports 2.36 vs 1.61 s/frame (+47 %); the goal is a
relative overhead below that. The ratio of network work does not depend on the device much, so a CPU
measurement at a small latent size is indicative; absolute times are not.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3, help="driving frames (plus the anchor frame)")
    ap.add_argument("--latent", type=int, default=16, help="latent side (video side / 8, a multiple of 8)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from marionette.models.dispose.controlled_unet import DisPoseUNet
    from marionette.models.dispose.controlnet import DisPoseControlNet, dispose_controlnet_config
    from marionette.models.svd.configs import svd_xt_unet_config
    from marionette.models.svd.sampler import SamplerSettings, sample
    from marionette.models.svd.unet import build_unet

    torch.manual_seed(0)
    unet = build_unet(svd_xt_unet_config()).eval().requires_grad_(False)
    controlnet = DisPoseControlNet(**dispose_controlnet_config()).eval().requires_grad_(False)
    frames, size = args.frames + 1, args.latent * 8
    latent = args.latent
    cond = torch.randn(1, 1, 1024)
    ref = torch.randn(4, latent, latent)
    pose = torch.randn(frames, 320, latent, latent) * 0.1
    inputs = dict(dense_flow=torch.randn(frames, 2, size, size) * 3, sparse_flow=torch.randn(frames, 2, size, size),
                  points=torch.rand(frames, 18, 2), visible=torch.ones(frames, 18, dtype=torch.bool))
    embeddings = torch.randn(1, 18, 1280)
    dispose = DisPoseUNet(unet, controlnet, (size, size), embeddings)
    settings = SamplerSettings.preset("mimicmotion", steps=args.steps)

    def run(fn, extra):
        start = time.perf_counter()
        sample(fn, cond, torch.zeros_like(cond), ref, pose, settings, frame_inputs=extra)
        return time.perf_counter() - start

    times = {"mimicmotion": [], "dispose": []}
    for _ in range(args.repeat):
        times["mimicmotion"].append(run(unet, None))
        times["dispose"].append(run(dispose, inputs))
    plain, ours = min(times["mimicmotion"]), min(times["dispose"])
    print(f"full-size SVD-xt UNet + DisPose ControlNet, random weights, CPU {args.threads} thread(s): "
          f"{frames} frames at {size}x{size}, CFG 2, {args.steps} steps")
    print(f"{'MimicMotion':<14}{plain / args.steps:8.2f} s/step")
    print(f"{'DisPose':<14}{ours / args.steps:8.2f} s/step")
    print(f"{'overhead':<14}{100 * (ours / plain - 1):7.1f} %  (paper: +47 %)")


if __name__ == "__main__":
    main()
