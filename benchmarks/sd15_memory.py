"""Champ / Animate Anyone: working memory against clip length (context windows, chunked guidance encoding and
chunked decode) against encoding and decoding all frames at once.

    python benchmarks/sd15_memory.py [--frames 24 48 96 192] [--size 128] [--steps 1]

Each measurement runs in a fresh process (peak RSS is a high-water mark) on the tiny random Champ model (all four
guidance encoders) on CPU: the process builds the model and the inputs, records its RSS, runs `animate_sd15`,
then reports working memory = peak RSS - RSS before - the returned float32 frames (which any caller holds).
Configurations:
  ours       guidance encoded 16 frames at a time, decode chunk 4, windows of 24 / overlap 4   (the defaults)
  unchunked  guidance encoded in one call of all F frames, one decode call of F frames (windows as ours)
The summed guidance features of the whole clip are kept (F x 320 x h x w in the model dtype; listed as
"feature store"): on a GPU they stay on the CPU (`store_device`) and one window's slice at a time goes to the
device, so device memory does not grow with F; on this CPU-only run they are part of the RSS.
Goal: the working memory of `ours` stays flat as F grows (up to the feature store).
"""
import argparse
import json
import os
import sys

from memory_runs import peak_mb, rss_mb, run_children  # benchmarks/ is the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("ours", "unchunked")


def child(config: str, frames: int, size: int, steps: int) -> dict:
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import harness  # noqa: F401  (the `marionette` library alias)
    from marionette.models.champ.tiny import tiny_champ
    from marionette.models.pipelines import sd15_animation
    from marionette.models.pipelines.sd15_animation import SD15Animation, animate_sd15
    from marionette.models.sd15.refnet_tiny import tiny_image_encoder, tiny_vae
    from marionette.models.sd15.sampler import SD15SamplerSettings

    torch.set_num_threads(1)
    model = SD15Animation.from_parts("champ", tiny_champ(), tiny_vae(), tiny_image_encoder(), tiny=True)
    gen = torch.Generator().manual_seed(0)
    reference = torch.rand(1, size, size, 3, generator=gen)
    guidance = {name: torch.rand(frames, size, size, 3, generator=gen) for name in model.guidance_encoders}
    chunk = 4
    if config == "unchunked":
        sd15_animation.GUIDANCE_CHUNK, chunk = frames, frames
    before = rss_mb()
    result = animate_sd15(model, reference, guidance, SD15SamplerSettings(steps=steps), device=torch.device("cpu"),
                          decode_chunk=chunk)
    peak = peak_mb()
    output = result.frames.numel() * result.frames.element_size() / 2 ** 20
    channels = model.denoising_unet.conv_in.out_channels
    store = frames * channels * (size // 8) ** 2 * 4 / 2 ** 20
    return {"config": config, "frames": frames, "before_mb": before, "peak_mb": peak, "output_mb": output,
            "store_mb": store, "working_mb": peak - before - output}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[24, 48, 96, 192])
    ap.add_argument("--size", type=int, default=128, help="square video side in pixels")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "FRAMES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.size, args.steps)))
        return
    rows = run_children(__file__, CONFIGS, args.frames, "--size", str(args.size), "--steps", str(args.steps))
    print(f"tiny Champ (4 guidance encoders) on CPU, {args.size}x{args.size}, {args.steps} step(s); working memory "
          "in MB (peak RSS - before - returned frames)")
    print(f"{'frames':<14}" + "".join(f"{f:>10}" for f in args.frames))
    for config in CONFIGS:
        print(f"{config:<14}" + "".join(f"{rows[config, f]['working_mb']:>10.0f}" for f in args.frames))
    print(f"{'feature store':<14}" + "".join(f"{rows['ours', f]['store_mb']:>10.1f}" for f in args.frames))
    print(f"{'frames out':<14}" + "".join(f"{rows['ours', f]['output_mb']:>10.0f}" for f in args.frames))


if __name__ == "__main__":
    main()
