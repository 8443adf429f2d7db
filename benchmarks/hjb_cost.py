"""HJB face refinement cost: extra wall time per refined denoising step, against a plain sampler step and
against one VAE decode of all frames (the unit the refinement is made of).

    python benchmarks/hjb_cost.py [--frames 8] [--size 128] [--steps 2] [--iterations 3] [--repeat 2]

Tiny StableAnimator model and tiny face model on CPU (1 thread). `sample` runs with CFG 3 (two UNet calls
per window) without and with refinement at every step; extra per refined step = (t_hjb - t_plain) / steps.
With the real models the UNet is ~1.5 G parameters and the VAE decoder ~0.1 G, so on real weights the
step grows relatively less than here, where the tiny UNet is cheap next to a full-resolution decode.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from marionette.models.svd.conditioning import decode_latents
    from marionette.models.stableanimator.hjb import FaceRefiner, RefineSettings
    from marionette.models.stableanimator.iresnet import tiny_iresnet
    from marionette.models.svd.sampler import SamplerSettings, sample
    from marionette.models.pipelines.svd_tiny import tiny_animation_model

    model = tiny_animation_model("stableanimator", seed=0)
    latent, frames = args.size // 8, args.frames
    with torch.no_grad():
        pose = model.pose_net(torch.rand(frames, 3, args.size, args.size) * 2 - 1)
    cond = torch.randn(1, 5, model.unet_config["cross_attention_dim"])
    ref = torch.randn(4, latent, latent)
    settings = SamplerSettings(steps=args.steps, cfg_min=3.0, cfg_max=3.0, tile_size=16, tile_overlap=4)
    box = (args.size // 4, args.size // 2, args.size // 4, args.size // 2)
    embedder = tiny_iresnet()
    reference = torch.randn(embedder.fc.out_features)

    def refiner(checkpointing: bool):
        return FaceRefiner(embedder, reference, [box] * frames, model.vae, model.vae_scaling_factor,
                           RefineSettings(iterations=args.iterations, end_step=args.steps,
                                          gradient_checkpointing=checkpointing))

    def plain():
        sample(model.unet, cond, torch.zeros_like(cond), ref, pose, settings)

    def decode():
        with torch.no_grad():
            decode_latents(model.vae, torch.randn(frames, 4, latent, latent), 4, model.vae_scaling_factor)

    runs = {"plain": plain, "decode": decode,
            "hjb": lambda: sample(model.unet, cond, torch.zeros_like(cond), ref, pose, settings, refine=refiner(False)),
            "hjb-ckpt": lambda: sample(model.unet, cond, torch.zeros_like(cond), ref, pose, settings,
                                       refine=refiner(True))}
    times = {name: [] for name in runs}
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits every variant alike
        for name, fn in runs.items():
            times[name].append(best(fn, 1))
    t_plain, t_decode = min(times["plain"]) / args.steps, min(times["decode"])
    print(f"tiny StableAnimator on CPU (1 thread): {frames} frames {args.size}x{args.size}, CFG 3, tile 16/4, "
          f"{args.steps} steps, {args.iterations} Adam iterations per refined step")
    print(f"{'plain step':<34}{t_plain:8.2f} s")
    print(f"{'decode of all frames (chunk 4)':<34}{t_decode:8.2f} s")
    for name in ("hjb", "hjb-ckpt"):
        extra = (min(times[name]) / args.steps) - t_plain
        label = "extra per refined step" + (" (checkpointing)" if name == "hjb-ckpt" else "")
        print(f"{label:<40}{extra:8.2f} s = {extra / t_plain:5.1f} plain steps = {extra / t_decode:4.1f} decodes "
              f"({extra / t_decode / args.iterations:.1f} per iteration)")


if __name__ == "__main__":
    main()
