"""Embedded pose backend on real footage: frames/s at 1080p and 540p, the cost of the mirrored
landmark pass, and of the clip smoothing; plus its accuracy on the annotated real people.

    python benchmarks/pose_realdata.py [--frames 20] [--threads 1]

Footage: mmpose's demo.mp4 (960×540, a person walking; ../shared/realdata), looped to --frames,
as is (540p) and upscaled to 1920×1080. Tracking on (video mode), hands and face on. Jitter and hand
flicker before/after smoothing are measured on demo_coco.gif (39 frames, 320×180) and the demo clip
(no ground truth there: tests/test_pose_smoothing.py holds the error against the truth).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)
import realdata_pose as RP  # noqa: E402
from harness import MEDIAPIPE  # noqa: E402


def load_clip(frames: int):
    import cv2
    import numpy as np
    cap = cv2.VideoCapture(str(RP.REALDATA / "demo" / "resources" / "demo.mp4"))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame[..., ::-1])
    if not out:
        raise SystemExit(f"cannot read demo.mp4 under {RP.REALDATA}: {RP.MISSING_REASON}")
    loop = [out[i % len(out)] if (i // len(out)) % 2 == 0 else out[len(out) - 1 - i % len(out)] for i in range(frames)]
    small = np.ascontiguousarray(np.stack(loop))
    big = np.ascontiguousarray(np.stack([cv2.resize(f, (1920, 1080), interpolation=cv2.INTER_LINEAR) for f in small]))
    return {"540p (960x540)": small, "1080p (1920x1080)": big}


def jitter_and_flicker(poses):
    """Mean body keypoint acceleration (px/frame²) and the number of times a hand appears or vanishes."""
    import numpy as np
    body = np.stack([p.body[0] if p.num_people else np.zeros((18, 3)) for p in poses])
    seen = body[..., 2] >= 0.3
    triple = seen[2:] & seen[1:-1] & seen[:-2]
    acc = np.linalg.norm(body[2:, :, :2] - 2 * body[1:-1, :, :2] + body[:-2, :, :2], axis=-1)[triple]
    flicker = 0
    for part in ("left_hand", "right_hand"):
        shown = np.array([p.num_people > 0 and (getattr(p, part)[0, :, 2] >= 0.3).any() for p in poses])
        flicker += int(np.abs(np.diff(shown.astype(int))).sum())
    return float(acc.mean()) if acc.size else float("nan"), flicker


def load_gif():
    import imageio.v3 as iio
    import numpy as np
    return np.ascontiguousarray(iio.imread(str(RP.REALDATA / "demo" / "resources" / "demo_coco.gif"))[..., :3])


def timed(fn, repeat: int = 2):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from marionette.models.pose.blazepose import BlazePoseEstimator
    from marionette.models.pose.smoothing import smooth_frames

    clips = load_clip(args.frames)
    print(f"{'footage':20s} {'setting':34s} {'frames/s':>9s}")
    poses = None
    for label, frames in clips.items():
        for setting, flip in (("body+hands+face, mirrored pass", True), ("body+hands+face, single pass", False)):
            est = BlazePoseEstimator(str(MEDIAPIPE), num_threads=args.threads, flip=flip)
            seconds, out = timed(lambda: est(frames, track=True))
            poses = out if flip else poses
            print(f"{label:20s} {setting:34s} {len(frames) / seconds:9.1f}")
    for level in ("light", "strong"):
        seconds, _ = timed(lambda: smooth_frames(poses, level), repeat=3)
        print(f"smoothing '{level}': {1000 * seconds / len(poses):.2f} ms per frame ({len(poses)} frames, 1 person)")
    est = BlazePoseEstimator(str(MEDIAPIPE), num_threads=args.threads)
    print("\nbody jitter (px/frame²) and hand appear/vanish events, raw -> light -> strong:")
    for label, frames in (("demo_coco.gif 320x180", load_gif()), ("demo.mp4 loop 960x540", clips["540p (960x540)"])):
        raw = est(frames, track=True)
        figures = [jitter_and_flicker(smooth_frames(raw, level)) for level in ("off", "light", "strong")]
        print(f"  {label:24s} jitter " + " -> ".join(f"{j:.2f}" for j, _ in figures)
              + ", hand events " + " -> ".join(str(f) for _, f in figures))
    est = BlazePoseEstimator(str(MEDIAPIPE), num_threads=args.threads)
    print("\naccuracy on annotated people (PCK@0.1 of the box diagonal, crops padded 25 %):")
    for dataset in ("COCO", "OCHuman", "CrowdPose", "COCO-WholeBody"):
        tallies = RP.evaluate(lambda crop: est(crop[None], track=False)[0], dataset)
        print(f"  {dataset:15s} " + ", ".join(f"{k} {v}" for k, v in tallies.items()))
    for dataset in RP.SINGLE_PERSON:
        tallies = RP.evaluate(lambda image: est(image[None], track=False)[0], dataset, whole_frame=True)
        print(f"  {dataset:15s} whole frames: body {tallies['body']}")


if __name__ == "__main__":
    main()
