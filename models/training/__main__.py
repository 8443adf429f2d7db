"""Command line of the trainer (run from the pack's folder, the one holding `models/`):

    python -m models.training prepare     --videos DIR --cache DATA            # once: pose, body, renders
    python -m models.training autoencoder --data DATA --output-dir runs/ae     # only without SVD's VAE
    python -m models.training vividpose   --data DATA --autoencoder runs/ae/autoencoder.safetensors \\
                                          --output-dir runs/vividpose                # the small model
                                          (--init FILE instead of --autoencoder continues a small model)
    python -m models.training vividpose   --data DATA --svd stable-video-diffusion-img2vid-xt \\
                                          --sd21 v2-1_512-ema-pruned.safetensors --output-dir runs/vp_full
                                          # full size: the paper's init from SVD-xt and SD2.1 (GPUs)
    python -m models.training evaluate    --model runs/vividpose/vividpose.safetensors --data DATA
Several processes / GPUs / machines: the same command under `accelerate launch [--num_processes N ...] -m
models.training ...` or `torchrun --nproc_per_node N -m models.training ...`. Rerunning a command with the
same --output-dir resumes it; Ctrl-C saves and exits.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields

from ..errors import MarionetteError
from .engine import TrainSettings, settings_from_args, train


def _run_arguments(parser: argparse.ArgumentParser, defaults: dict) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    for f in fields(TrainSettings):
        if f.name == "output_dir":
            parser.add_argument("--output-dir", required=True)
            continue
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), type(f.default))
            parser.add_argument(flag, type=kind, default=default)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="preprocess a folder of videos into a training dataset")
    prep.add_argument("--videos", required=True)
    prep.add_argument("--cache", required=True)
    prep.add_argument("--width", type=int, default=96)
    prep.add_argument("--height", type=int, default=128)
    prep.add_argument("--body-model", default="anny")
    prep.add_argument("--render-type", default="dense")
    prep.add_argument("--face-root", default=None, help="insightface folder with antelopev2 (identity training)")

    ae = commands.add_parser("autoencoder", help="train the small autoencoder (models without SVD's VAE)")
    ae.add_argument("--data", required=True)
    ae.add_argument("--frames", type=int, default=4)
    ae.add_argument("--init", default="", help="an autoencoder.safetensors (or a small VividPose file that bundles "
                                               "one) to start from")
    ae.add_argument("--decoder-only", action="store_true",
                    help="train the decoder alone (the encoder, and so the latents, stay exactly as --init's)")
    ae.add_argument("--latent-channels", type=int, default=4, help="4 as SVD's VAE; more keep more detail")
    _run_arguments(ae, {"steps": 2000, "batch_size": 4, "learning_rate": 1e-3, "ema_decay": 0.0,
                        "save_every": 250, "validate_every": 250})

    pl = commands.add_parser("patch-latent", help="fit the fixed patch latent (principal components of the training "
                                                  "frames' patches), an alternative to training an autoencoder")
    pl.add_argument("--data", required=True)
    pl.add_argument("--output", required=True, help="the .safetensors to write (pass it to vividpose --autoencoder)")
    pl.add_argument("--components", type=int, default=16, help="latent channels: principal components kept")
    pl.add_argument("--factor", type=int, default=8, help="patch size: the latent's downsampling (8 as SVD's VAE)")

    vp = commands.add_parser("vividpose", help="train VividPose")
    vp.add_argument("--data", required=True)
    size = vp.add_mutually_exclusive_group()
    size.add_argument("--autoencoder", help="small model: autoencoder.safetensors of an `autoencoder` run")
    vp.add_argument("--init", help="small model: continue from a small VividPose export (its architecture, "
                                   "weights, bundled autoencoder and image encoder; with --autoencoder, that one "
                                   "replaces the bundled one, which needs the same encoder)")
    size.add_argument("--svd", help="full size: the stable-video-diffusion-img2vid-xt diffusers folder (UNet init, "
                                    "frozen VAE and CLIP image encoder)")
    vp.add_argument("--sd21", default="", help="full size: Stable Diffusion 2.1's UNet (diffusers "
                                               "unet/diffusion_pytorch_model.safetensors or the single file) to "
                                               "initialise the ReferenceNet; without it the ReferenceNet is random")
    vp.add_argument("--frames", type=int, default=8)
    vp.add_argument("--drop-probability", type=float, default=0.1)
    vp.add_argument("--identity", action=argparse.BooleanOptionalAction, default=False)
    vp.add_argument("--validation-clip", default="")
    vp.add_argument("--reference-frames", default="0", type=_frame_numbers,
                    help="comma-separated frames of each clip used as the reference image (e.g. 0,8,16)")
    vp.add_argument("--colour-orders", type=int, default=1,
                    help="1..6: each window also seen with its frames' and reference's RGB channels reordered")
    vp.add_argument("--stretch", type=float, default=1.0,
                    help="> 1: each window also seen cropped and stretched, each side up to this factor (e.g. 1.3): "
                         "body widths, sizes and places the clips do not have")
    vp.add_argument("--person-weight", type=float, default=1.0,
                    help="> 1: the loss over the person (the clips' masks) counts this many times the background's "
                         "(e.g. 3), so the model spends itself on the person rather than remembering rooms")
    _run_arguments(vp, {"steps": 4000, "batch_size": 2, "learning_rate": 3e-4, "ema_decay": 0.999,
                        "warmup_steps": 100, "save_every": 250, "validate_every": 500})
    ev = commands.add_parser("evaluate", help="self-reconstruction metrics of a VividPose checkpoint vs baselines")
    ev.add_argument("--model", required=True, help="a VividPose .safetensors that bundles its VAE and encoder")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="heldout")
    ev.add_argument("--frames", type=int, default=16)
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--cfg", type=float, default=3.0)
    ev.add_argument("--out", default=None, help="folder for metrics.json / metrics.md and strips")
    return parser


def _frame_numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of frame numbers") from None


def _face_embedder(root: str | None):
    """insightface antelopev2 (ArcFace) from `root`, for datasets that train the identity controller."""
    if root is None:
        return None
    from ..stableanimator.face_id import FaceEmbedder
    return FaceEmbedder(root)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = "python -m models.training " + shlex.join(argv)
    try:
        if args.command == "prepare":
            from .dataset import prepare_dataset
            index = prepare_dataset(args.videos, args.cache, size=(args.width, args.height),
                                    body_model=args.body_model, render_type=args.render_type,
                                    face_embedder=_face_embedder(args.face_root))
            print(f"{len(index['clips'])} clips ready, {len(index['skipped'])} skipped (listed in index.json).")
            return 0
        if args.command == "evaluate":
            from .evaluate import evaluate_checkpoint, table
            summary = evaluate_checkpoint(args.model, args.data, args.split, args.frames, args.steps, args.cfg,
                                          out=args.out)
            print(table(summary))
            return 0
        if args.command == "patch-latent":
            from .patch_latent import write_patch_latent
            from .vividpose_task import check_data
            check_data(args.data)
            latent = write_patch_latent(args.data, args.output, args.components, args.factor, {"command": command})
            print(f"{args.output}: {args.components} components of {args.factor}x{args.factor} patches, stds "
                  f"{float(latent.scale[0]):.3f} .. {float(latent.scale[-1]):.3f}")
            return 0
        settings = settings_from_args(args, args.output_dir)
        if args.command == "autoencoder":
            from .autoencoder import AutoencoderTask, AutoencoderTaskConfig
            task = AutoencoderTask(AutoencoderTaskConfig(data=args.data, frames=args.frames, init=args.init,
                                                         decoder_only=args.decoder_only,
                                                         latent_channels=args.latent_channels))
        else:
            from .vividpose_task import VividPoseTask, VividPoseTaskConfig, check_data
            check_data(args.data)
            task = VividPoseTask(VividPoseTaskConfig(
                data=args.data, autoencoder=args.autoencoder or "", init=args.init or "", svd=args.svd or "",
                sd21=args.sd21, frames=args.frames, reference_frames=args.reference_frames,
                colour_orders=args.colour_orders, stretch=args.stretch, person_weight=args.person_weight,
                drop_probability=args.drop_probability, identity=args.identity,
                validation_clip=args.validation_clip))
        result = train(task, settings, command, progress=args.progress)
        print(f"[{task.name}] {result['step']} steps; model: {result['export']}")
        return 0
    except KeyboardInterrupt:
        print("interrupted: the state is saved; run the same command again to resume", file=sys.stderr)
        return 130
    except MarionetteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
