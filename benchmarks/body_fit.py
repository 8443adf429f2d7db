"""SMPLXFit speed and accuracy on a synthetic Anny clip, side by side in one run.

    python benchmarks/body_fit.py [--frames 16] [--size 512]

For each keypoint source (ground-truth 2D joints, the embedded BlazePose backend) and option set
(the library default, the node's default of 50 iterations per stage) it reports fit seconds per
frame, the share of that time spent in the body model's own forward calls, the mean 2D reprojection
error and the 3D MPJPE after Procrustes alignment (body joints).
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


if __name__ == "__main__":
    main()
