"""Champ / Animate Anyone sampler overhead: wall time of the windowed DDIM loop (`sd15.sampler.sample` with the
pipeline's `WindowDenoiser`) against the bare denoising-UNet calls it makes (same inputs, same count).

    python benchmarks/sd15_sampler.py [--frames 30] [--context 24] [--overlap 4] [--steps 6] [--latent 16]
                                      [--cfg 3.5] [--repeat 3] [--threads 1] [--family champ]

Runs the tiny random model (`champ.tiny` / `animate_anyone.tiny`: the released structure, 16 reference-attention
blocks, 21 motion modules) on CPU. The UNet inputs of one sampling run are recorded (with whether reference
attention was on), then the sampler and a plain replay of those calls are timed alternately (best of
--repeat each); the ratio is what the sampler's own work (window gathering, guidance slices, reference
attention switching, averaging, CFG, DDIM) adds to the network. Goal: <= 1.05x. The one-off work before
and after the loop (CLIP, reference UNet, guidance encoders, decoding) is not part of either.
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

    def __getattr__(self, name):
        return getattr(self.__dict__["unet"], name)

    def __call__(self, sample, timestep, context, features):
        if self.recording:
            with_reference = self.unet.transformer_blocks()[0].reference_bank is not None
            self.calls.append((sample.clone(), timestep.clone(), context, features.clone(), with_reference))
        return self.unet(sample, timestep, context, features)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--context", type=int, default=24)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--latent", type=int, default=16, help="latent height and width (pixels / 8)")
    ap.add_argument("--cfg", type=float, default=3.5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--family", choices=("champ", "animate_anyone"), default="champ")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from marionette.models.pipelines.sd15_animation import SD15Animation, WindowDenoiser, encode_guidance
    from marionette.models.sd15.reference import record_reference, reference_attention
    from marionette.models.sd15.refnet_tiny import TINY_UNET, tiny_image_encoder, tiny_vae
    from marionette.models.sd15.sampler import SD15SamplerSettings, sample, seeded_generator, start_noise

    if args.family == "champ":
        from marionette.models.champ.tiny import tiny_champ
        loaded = tiny_champ()
    else:
        from marionette.models.animate_anyone.tiny import tiny_animate_anyone
        loaded = tiny_animate_anyone()
    model = SD15Animation.from_parts(args.family, loaded, tiny_vae(), tiny_image_encoder(), tiny=True)
    size, device = args.latent, torch.device("cpu")
    names = list(model.guidance_encoders)
    guidance = {name: torch.rand(args.frames, 8 * size, 8 * size, 3) for name in names}
    cond = torch.randn(1, 1, TINY_UNET["cross_attention_dim"])
    with torch.no_grad():
        banks = record_reference(model.reference_unet, torch.randn(1, 4, size, size), cond)
        features = encode_guidance(model, guidance, args.frames, device, device, lambda: None)
    unet = Recorder(model.denoising_unet)
    denoiser = WindowDenoiser(unet, banks, cond, features, device)
    settings = SD15SamplerSettings(steps=args.steps, cfg=args.cfg, context_frames=args.context,
                                   context_overlap=args.overlap)
    noise = start_noise(args.frames, (size, size), seeded_generator(0))

    def run_sampler():
        return sample(denoiser, noise, settings, dtype=torch.float32)

    def run_bare():
        with torch.no_grad():
            for sample_in, timestep, context, feats, with_reference in unet.calls:
                if with_reference:
                    with reference_attention(model.denoising_unet, banks):
                        model.denoising_unet(sample_in, timestep, context, feats)
                else:
                    model.denoising_unet(sample_in, timestep, context, feats)

    def timed(fn) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process): on a busy machine the CPU time is the steadier one."""
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    unet.recording = True
    run_sampler()
    unet.recording = False
    sampler_times, bare_times = [], []
    for _ in range(args.repeat):  # alternate so drift in machine load hits both alike
        bare_times.append(timed(run_bare))
        sampler_times.append(timed(run_sampler))
    print(f"tiny {args.family} model on CPU ({args.threads} thread(s)): {args.frames} frames, context {args.context}, "
          f"overlap {args.overlap}, {args.steps} steps, CFG {args.cfg}, latent {size}x{size}")
    print(f"UNet calls per run: {len(unet.calls)}")
    print(f"{'best of ' + str(args.repeat):<22}{'wall':>9}{'CPU':>9}")
    for label, times in (("sampler", sampler_times), ("bare UNet calls", bare_times)):
        print(f"{label:<22}{min(t[0] for t in times):8.3f}s{min(t[1] for t in times):8.3f}s")
    ratios = [min(t[i] for t in sampler_times) / min(t[i] for t in bare_times) for i in (0, 1)]
    print(f"{'ratio':<22}{ratios[0]:8.3f}x{ratios[1]:8.3f}x  (goal <= 1.05)")


if __name__ == "__main__":
    main()
