"""A folder of synthetic training videos: random Anny bodies, clothes and motions, with person masks.

    python -m models.synthetic.video_set --out DIR [--train 64 --heldout 8 --extra 0 --kneel 0 --lunge 0
                                                    --width 192 --height 256 --frames 24 --seed 0]

Writes DIR/<name>.mp4, DIR/<name>.mask.npz (bool [T, H, W] under "masks") and DIR/manifest.json.

Held-out clips test generalisation to bodies AND motions training never saw:
- motions: every combination containing "squat" is held out (train clips never squat);
- bodies: weight above HELDOUT_WEIGHT (heavy builds) is held out (train clips stay below it).
`--extra N` adds N training clips (`extra_000`, ...) whose torsos bow forward or bend sideways with straight
knees (EXTRA_MOTIONS), so training sees heads and shoulders leave their place in the reference, which the
first motions never do; they never squat and stay below the held-out weight.
`--kneel N` adds N training clips (`kneel_000`, ...) that go down on one knee and up again (KNEEL_MOTIONS): the
whole body lowers most of the way it does in the held-out squats, on other legs (one knee forward, one down).
`--lunge N` adds N training clips (`lunge_000`, ...) that lunge forward, reach forward with both arms, or join
these with a bow or a kneel (LUNGE_MOTIONS): more ways for the head to come down and the arms to come forward,
on legs that never bend together as a squat's do.
Every clip is reproducible from (--seed, kind, index) alone, whatever the clip counts.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import MarionetteError
from .actor import PHENOTYPE_KEYS, Phenotype, procedural_motion
from .body_motions import spin_motion
from .clip import SyntheticClip, render_actor
from .scene import Appearance

FPS, FILL = 12.0, 0.8
HELDOUT_WEIGHT = 0.8
TRAIN_MOTIONS = ("still", "walk", "wave", "arms", "turn", "spin", "walk+wave", "walk+turn", "wave+turn",
                 "arms+turn", "walk+wave+turn")
HELDOUT_MOTIONS = ("squat", "squat+wave", "squat+turn", "squat+arms")
EXTRA_MOTIONS = ("bow", "bend", "bow+wave", "bow+arms", "bend+wave", "bend+turn", "bow+walk")
KNEEL_MOTIONS = ("kneel", "kneel+wave", "kneel+arms", "kneel+turn")
LUNGE_MOTIONS = ("lunge", "lunge+reach", "lunge+bow", "lunge+wave", "lunge+turn", "reach", "reach+walk",
                 "reach+bow", "kneel+bow", "kneel+reach")
# kind -> (its random stream, split, motions); "extra", "kneel" and "lunge" clips are training clips from their
# own streams
KINDS = {"train": (0, "train", TRAIN_MOTIONS), "heldout": (1, "heldout", HELDOUT_MOTIONS),
         "extra": (2, "train", EXTRA_MOTIONS), "kneel": (3, "train", KNEEL_MOTIONS),
         "lunge": (4, "train", LUNGE_MOTIONS)}
# (low, high) of each phenotype value: adults of all builds; weight is split between train and held-out.
RANGES = {"gender": (0.0, 1.0), "age": (0.45, 0.9), "muscle": (0.2, 0.8), "height": (0.1, 0.9),
          "proportions": (0.2, 0.8)}
WEIGHT = {"train": (0.1, HELDOUT_WEIGHT), "heldout": (HELDOUT_WEIGHT, 1.0)}


def clip_spec(seed: int, kind: str, index: int) -> dict:
    """The recipe of one clip of `kind` (train, heldout, extra, kneel or lunge): name, split, phenotype,
    appearance seed, motion and motion seed."""
    stream, split, motions = KINDS[kind]
    rng = np.random.default_rng([int(seed), stream, int(index)])
    ranges = dict(RANGES, weight=WEIGHT[split])
    phenotype = {k: round(float(rng.uniform(*ranges[k])), 4) for k in PHENOTYPE_KEYS}
    return {"name": f"{kind}_{index:03d}", "split": split, "phenotype": phenotype,
            "appearance_seed": int(rng.integers(2**31)), "motion": motions[int(rng.integers(len(motions)))],
            "seed": int(rng.integers(2**31))}


def motion_poses(motion: str, frames: int, seed: int) -> list[dict]:
    """Per-frame bone rotations: "spin" turns on the spot (seeded start and extent), else the '+'-joined
    procedural motions."""
    if motion == "spin":
        rng = np.random.default_rng(seed)
        return spin_motion(frames, degrees=float(rng.uniform(90, 360)), start=float(rng.uniform(-45, 45)))
    return procedural_motion(motion, frames, FPS, seed)


def render_spec(spec: dict, width: int, height: int, frames: int) -> SyntheticClip:
    poses = motion_poses(spec["motion"], frames, spec["seed"])
    return render_actor(Phenotype(**spec["phenotype"]), poses, width, height, FPS, spec["motion"],
                        Appearance.sample(spec["appearance_seed"]), spec["seed"], FILL)


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """RGB uint8 [T, H, W, 3] -> mp4 (mp4v), checked by reading it back."""
    import cv2
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise MarionetteError(f"OpenCV cannot write {path}.", "Install an OpenCV build with video support.")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    capture, count = cv2.VideoCapture(str(path)), 0
    while capture.read()[0]:
        count += 1
    capture.release()
    if count != len(frames):
        raise MarionetteError(f"{path} reads back {count} of {len(frames)} frames.",
                              "Check the OpenCV build's mp4v (FFmpeg) support.")


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def render_video_set(out: str, train: int = 64, heldout: int = 8, width: int = 192, height: int = 256,
                     frames: int = 24, seed: int = 0, progress=print, extra: int = 0, kneel: int = 0,
                     lunge: int = 0) -> list[dict]:
    """Renders the set into `out` (see the module doc); returns the manifest's clip entries."""
    counts = {"train": train, "heldout": heldout, "extra": extra, "kneel": kneel, "lunge": lunge}
    if min(counts.values()) < 0 or not 1 <= frames <= 1000:
        raise MarionetteError(f"Bad set size: {counts}, frames={frames}.",
                              "Use non-negative clip counts and 1..1000 frames.")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    specs = [clip_spec(seed, kind, i) for kind, count in counts.items() for i in range(count)]
    settings = {"width": width, "height": height, "frames": frames, "fps": FPS, "fill": FILL, "seed": seed,
                "heldout_rule": f"heldout clips squat and have weight > {HELDOUT_WEIGHT}; train clips neither"}
    done = []
    for i, spec in enumerate(specs):
        start = time.perf_counter()
        clip = render_spec(spec, width, height, frames)
        write_video(folder / f"{spec['name']}.mp4", clip.frames, FPS)
        np.savez_compressed(folder / f"{spec['name']}.mask.npz", masks=clip.masks.astype(bool))
        done.append(spec)
        _write_json(folder / "manifest.json", {"settings": settings, "clips": done})
        progress(f"[{i + 1}/{len(specs)}] {spec['name']}: {spec['motion']}, weight {spec['phenotype']['weight']:.2f} "
                 f"({time.perf_counter() - start:.1f} s)")
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render synthetic Anny training videos with person masks.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=8)
    parser.add_argument("--extra", type=int, default=0, help="training clips that bow or bend (see the module doc)")
    parser.add_argument("--kneel", type=int, default=0, help="training clips that kneel (see the module doc)")
    parser.add_argument("--lunge", type=int, default=0, help="training clips that lunge or reach (see the module doc)")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    render_video_set(a.out, a.train, a.heldout, a.width, a.height, a.frames, a.seed, extra=a.extra,
                     kneel=a.kneel, lunge=a.lunge)


if __name__ == "__main__":
    main()
