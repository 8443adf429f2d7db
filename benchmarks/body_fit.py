"""SMPLXFit speed and accuracy on a synthetic Anny clip, side by side in one run.

    python benchmarks/body_fit.py [--frames 16] [--size 512]

For each keypoint source (ground-truth 2D joints, the embedded BlazePose backend) and option set
(the library default, the node's default of 50 iterations per stage) it reports fit seconds per
frame, the share of that time spent in the body model's own forward calls, the mean 2D reprojection
error and the 3D MPJPE after Procrustes alignment (body joints). With --provocations it also fits
(library default, BlazePose keypoints) a full turn on the spot (facing error, largest jump beyond
the true turn) and an arm pointing at the camera (wrist depth error relative to the neck).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)
from harness import MEDIAPIPE  # noqa: E402

import numpy as np  # noqa: E402


class ForwardTimer:
    """Wraps a body model's forward to count calls and the time spent in them."""

    def __init__(self, model):
        self.model, self.calls, self.seconds = model, 0, 0.0
        self._forward = model.forward

    def __enter__(self):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = self._forward(*args, **kwargs)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out
        self.model.forward = timed
        return self

    def __exit__(self, *exc):
        del self.model.forward  # back to the class method


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--provocations", action="store_true", help="also the turn and pointing-arm clips")
    args = ap.parse_args()
    from marionette.models.body.fit import FitOptions, fit_options, fit_sequence
    from marionette.models.body.loading import load_body_model
    from marionette.models.body.posing import pose_sequence
    from marionette.models.pose.blazepose import BlazePoseEstimator
    from marionette.models.synthetic.clip import render_driving_clip
    from marionette.models.synthetic.metrics import procrustes_error

    clip = render_driving_clip(frames=args.frames, width=args.size, height=args.size, seed=0)
    model = load_body_model("anny")
    sources = {"ground-truth 2D": clip.pose_frames(),
               "BlazePose": BlazePoseEstimator(str(MEDIAPIPE), hands=True, face=False)(clip.frames)}
    truth = clip.joints3d()[:, :14]
    print(f"{'keypoints':16s} {'options':22s} {'s/frame':>8s} {'forward share':>14s} {'2D px':>7s} {'MPJPE-PA mm':>12s}")
    for source, frames in sources.items():
        for label, options in (("library default", FitOptions()), ("node default (50 it.)", fit_options(50))):
            with ForwardTimer(model) as timer:
                t = time.perf_counter()
                seq = fit_sequence(model, frames, options=options)
                seconds = time.perf_counter() - t
            joints = pose_sequence(model, seq).body18[:, :14]
            pa = np.mean([procrustes_error(p, q) for p, q in zip(joints, truth)]) * 1000
            print(f"{source:16s} {label:22s} {seconds / len(frames):8.2f} {timer.seconds / seconds:13.0%} "
                  f"{seq.info['reprojection_px']:7.2f} {pa:12.1f}   ({timer.calls} forward calls)")


    if args.provocations:
        provocations(model, args.frames, args.size)


def provocations(model, frames: int, size: int) -> None:
    from marionette.models.body.fit import FitOptions, fit_sequence
    from marionette.models.body.posing import pose_sequence
    from marionette.models.pose.blazepose import BlazePoseEstimator
    from marionette.models.synthetic.body_metrics import wrist_depth_error, yaw_report
    from marionette.models.synthetic.body_motions import pointing_motion, render_motion, spin_motion
    estimator = BlazePoseEstimator(str(MEDIAPIPE), hands=True, face=True)
    for name, motion in (("full turn", spin_motion(2 * frames, 360.0)), ("arm at the camera", pointing_motion(frames))):
        clip = render_motion(motion, name, width=size, height=size, seed=2)
        t = time.perf_counter()
        seq = fit_sequence(model, estimator(clip.frames, track=True), options=FitOptions())
        seconds = (time.perf_counter() - t) / clip.num_frames
        joints, truth = pose_sequence(model, seq).body18, clip.joints3d()
        if name == "full turn":
            r = yaw_report(joints, truth)
            figure = (f"facing error mean {r['mean_error_deg']:.1f}° max {r['max_error_deg']:.1f}°, largest jump "
                      f"beyond the turn {r['max_extra_jump_deg']:.1f}°, wrong-way frames {len(r['wrong_way_frames'])}")
        else:
            e = wrist_depth_error(joints, truth) * 100
            figure = f"wrist depth error (vs the neck) mean {e.mean():.1f} cm, max {e.max():.1f} cm"
        print(f"{name:18s} {clip.num_frames:3d} frames {seconds:6.2f} s/frame  {figure}")


if __name__ == "__main__":
    main()
