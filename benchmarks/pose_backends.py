"""Pose frames/s of both DWPoseExtract backends, side by side in one run, plus embedded accuracy.

    python benchmarks/pose_backends.py [--frames 24] [--size 512] [--threads 1]

Embedded (BlazePose + hand + face landmarks, ai-edge-litert): real models, real compute.
DWPose (ONNX): the released weights cannot be downloaded here, so it runs on stand-in graphs with
the real input/output signatures; its figure is our pre/post-processing (letterbox, NMS, affine
crops, SimCC decode, OpenPose mapping) without the networks' own compute.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)
from harness import ROOT  # noqa: E402


def timed(fn, repeat: int = 2):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from marionette.models.pose.blazepose import BlazePoseEstimator
    from marionette.models.pose.dwpose import DWPoseDetector
    from marionette.models.synthetic.clip import render_driving_clip
    from marionette.models.synthetic.metrics import pck
    from onnx_fakes import make_dwpose, make_yolox

    t = time.perf_counter()
    clip = render_driving_clip(frames=args.frames, width=args.size, height=args.size, seed=3)
    print(f"synthetic clip: {args.frames} frames {args.size}² rendered in {time.perf_counter() - t:.1f} s")
    frames, n = clip.frames, clip.num_frames
    mp = str(ROOT / "models" / "mediapipe")
    rows = []
    for label, hands, face, track in (("embedded body", False, False, True),
                                      ("embedded body+hands+face", True, True, True),
                                      ("embedded body+hands+face, no tracking", True, True, False)):
        est = BlazePoseEstimator(mp, hands=hands, face=face, num_threads=args.threads)
        seconds, poses = timed(lambda: est(frames, track=track))
        rows.append((label, n / seconds, f"PCK@0.1 {pck(poses, clip.joints2d):.3f}, "
                                         f"PCK@0.05 {pck(poses, clip.joints2d, alpha=0.05):.3f}"))
    with tempfile.TemporaryDirectory() as d:
        det = make_yolox(os.path.join(d, "yolox_l.onnx"))
        pose = make_dwpose(os.path.join(d, "dw-ll_ucoco_384.onnx"))
        dw = DWPoseDetector(det, pose, providers=["CPUExecutionProvider"])
        # one person per frame, as in the clip: the stand-in detector's own boxes are not meaningful
        boxes = [b[None] for b in clip.silhouette_boxes()]
        seconds, _ = timed(lambda: dw.detect_many(list(frames)))
        rows.append(("DWPose (ONNX) detector stage, stand-in graph", n / seconds,
                     "letterbox + YOLOX grid decode + NMS; network compute excluded"))
        seconds, _ = timed(lambda: dw.estimate_many(list(frames), boxes))
        rows.append(("DWPose (ONNX) keypoint stage, stand-in graph", n / seconds,
                     "affine crop + normalise + SimCC decode, 1 person/frame; network compute excluded"))
    print(f"\n{'backend':44s} {'frames/s':>9s}  notes  (OMP/litert threads: {args.threads})")
    for label, fps, note in rows:
        print(f"{label:44s} {fps:9.1f}  {note}")
    base = rows[0][1]
    print("\nratios to 'embedded body':", ", ".join(f"{label}: {fps / base:.2f}×" for label, fps, _ in rows[1:]))


if __name__ == "__main__":
    main()
