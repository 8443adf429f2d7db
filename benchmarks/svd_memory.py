"""Peak memory against video length: tiled sampling + chunked decode (and the HJB refinement's chunked
backward) against one window / one decode / one graph over all frames.

    python benchmarks/svd_memory.py [--frames 8 16 32 64] [--size 128] [--steps 2]

Each measurement runs in a fresh process (peak RSS is a high-water mark) on the tiny StableAnimator model
on CPU: the process loads the model, records its RSS, samples F frames and decodes them, then reports
working memory = peak RSS - RSS before sampling - the size of the returned float32 frames (which any
caller must hold). Configurations:
  tiled      tile 16 / overlap 4, decode chunk 4                    (our defaults)
  untiled    one window of all F frames, one decode call of F frames (what memory does without them)
  hjb        tiled + HJB refinement at every step, backward chunk 4  (ours)
  hjb-graph  tiled + HJB refinement with one graph over all F frames (the official HJB's memory profile)
Goal: the working memory of `tiled` and `hjb` stays flat as F grows.
"""
import argparse
import json
import os
import sys

from memory_runs import peak_mb, rss_mb, run_children  # benchmarks/ is the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("tiled", "untiled", "hjb", "hjb-graph")


def child(config: str, frames: int, size: int, steps: int) -> dict:
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import harness  # noqa: F401  (the `marionette` library alias)
    from marionette.models.svd.conditioning import decode_latents
    from marionette.models.stableanimator.hjb import FaceRefiner, RefineSettings
    from marionette.models.stableanimator.iresnet import tiny_iresnet
    from marionette.models.svd.sampler import SamplerSettings, sample
    from marionette.models.pipelines.svd_tiny import tiny_animation_model

    torch.set_num_threads(1)
    model = tiny_animation_model("stableanimator", seed=0)
    latent = size // 8
    tiled = config != "untiled"
    settings = SamplerSettings(steps=steps, tile_size=16 if tiled else frames, tile_overlap=4 if tiled else 1)
    chunk = 4 if tiled else frames
    with torch.no_grad():
        pose = model.pose_net(torch.rand(frames, 3, size, size) * 2 - 1)
    cond = torch.randn(1, 5, model.unet_config["cross_attention_dim"])
    ref = torch.randn(4, latent, latent)
    refine = None
    if config.startswith("hjb"):
        box = (size // 4, size // 2, size // 4, size // 2)
        embedder = tiny_iresnet()
        reference = torch.randn(embedder.fc.out_features)
        refine = FaceRefiner(embedder, reference, [box] * frames, model.vae, model.vae_scaling_factor,
                             RefineSettings(iterations=1, decode_chunk=4 if config == "hjb" else frames,
                                            gradient_checkpointing=False))
    before = rss_mb()
    latents = sample(model.unet, cond, torch.zeros_like(cond), ref, pose, settings, refine=refine)
    with torch.no_grad():
        video = torch.cat([decode_latents(model.vae, latents[i:i + chunk], chunk, model.vae_scaling_factor)
                           for i in range(0, frames, chunk)])
    peak = peak_mb()
    output = video.numel() * video.element_size() / 2 ** 20
    return {"config": config, "frames": frames, "before_mb": before, "peak_mb": peak, "output_mb": output,
            "working_mb": peak - before - output}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--size", type=int, default=128, help="square video side in pixels")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.size, args.steps)))
        return
    rows = run_children(__file__, CONFIGS, args.frames, "--size", str(args.size), "--steps", str(args.steps))
    print(f"tiny StableAnimator on CPU, {args.size}x{args.size}, {args.steps} steps; working memory in MB "
          "(peak RSS - before sampling - returned frames)")
    print(f"{'frames':<12}" + "".join(f"{f:>10}" for f in args.frames))
    for config in CONFIGS:
        print(f"{config:<12}" + "".join(f"{rows[config, f]['working_mb']:>10.0f}" for f in args.frames))
    print(f"{'frames out':<12}" + "".join(f"{rows['tiled', f]['output_mb']:>10.0f}" for f in args.frames))


if __name__ == "__main__":
    main()
