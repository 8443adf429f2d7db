"""PoseAlign's trust verdict on synthetic clips (our generator) and real Human3.6M frames.

    python benchmarks/align_trust.py [--frames 24]

For each case it prints the four trust measures in units of the reference's torso (neck to
mid-hip): the fit's RMS residual, the median offset of the aligned neck, the median torso scale
and the share of aligned keypoints off the canvas, and the verdict (ok / warn / stop) against
`TRUST_LIMITS`. Before these measures PoseAlign accepted every fit that passed its scale check,
silently. Poses come from the embedded backend (and the generator's ground truth where noted).
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)
from harness import MEDIAPIPE  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REAL = os.path.join(os.path.dirname(harness.ROOT), "shared", "realdata", "mmpose_testdata")
H36M, DEMO = os.path.join(REAL, "h36m"), os.path.join(REAL, "demo", "resources", "demo.mp4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=24)
    args = ap.parse_args()
    from marionette.models.errors import MarionetteError
    from marionette.models.pose.align import TRUST_LIMITS, apply_alignment, fit_alignment, judge_alignment
    from marionette.models.pose.blazepose import BlazePoseEstimator
    from marionette.models.synthetic.clip import render_driving_clip, render_reference
    estimator = BlazePoseEstimator(MEDIAPIPE, hands=False, face=False)

    def poses(frames, track=True):
        return estimator(np.ascontiguousarray(frames), track=track)

    def judge(name, ref, driving):
        try:
            fit = fit_alignment(ref, driving)
        except MarionetteError as e:
            print(f"{name:44s} fit refused: {e}")
            return
        t = judge_alignment(fit, ref, apply_alignment(fit, driving))
        print(f"{name:44s} {t.residual:8.2f} {t.neck:5.2f} {t.torso:6.2f} {t.off_canvas:6.2f}  {t.level}")

    print("limits (warn, stop):", ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in TRUST_LIMITS.items()))
    print(f"{'case':44s} residual  neck  torso    off  verdict")
    reference = render_reference(512, 768)
    ref_truth, ref_pose = reference.pose_frames()[0], poses(reference.frames, False)[0]
    for motion in ("turn", "walk+wave+turn", "arms", "squat"):
        clip = render_driving_clip(frames=args.frames, width=512, height=512, motion=motion, seed=3)
        judge(f"synthetic {motion} (ground truth)", ref_truth, clip.pose_frames())
        judge(f"synthetic {motion} (embedded)", ref_pose, poses(clip.frames))
        if motion == "turn":
            turn = clip
    image = reference.frames[0]
    half = np.ascontiguousarray(image[: int(image.shape[0] * 0.55)])
    judge("turn, half-body reference (cut at the hips)", poses(half[None], False)[0], poses(turn.frames))
    small = np.full_like(image, 128)
    small[384:, 256:] = cv2.resize(image, (256, 384))
    judge("turn, reference small in a corner", poses(small[None], False)[0], poses(turn.frames))
    cut = np.stack([np.roll(f, 200, axis=0) for f in turn.frames])
    cut[:, :200] = 128
    judge("turn, dancer cut by the bottom edge", ref_pose, poses(cut))
    wander = [f for f in turn.pose_frames()]
    for i, f in enumerate(wander):   # the dancer walks 1.5 body widths to the side over the clip
        f.body[0, :, 0] += np.where(f.body[0, :, 2] > 0, 160.0 * i / max(len(wander) - 1, 1), 0.0)
    judge("turn, dancer walking sideways (ground truth)", ref_truth, wander)
    files = sorted(glob.glob(os.path.join(H36M, "S*", "*", "*.jpg")))
    if not files:
        print(f"(no Human3.6M frames at {H36M})")
        return
    frames = {os.path.basename(f).split("_")[0]: cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files}
    pose = {k: poses(v[None], False)[0] for k, v in frames.items()}
    for other in ("S7", "S8"):
        judge(f"real: H3.6M S1 standing ← {other} standing", pose["S1"], [pose[other]])
    judge("real: H3.6M S1 standing ← S5 on the floor", pose["S1"], [pose["S5"]])
    top = np.ascontiguousarray(frames["S1"][: frames["S1"].shape[0] // 2])
    judge("real: H3.6M S1 upper half ← S7 standing", poses(top[None], False)[0], [pose["S7"]])
    video = cv2.VideoCapture(DEMO)
    clip = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        clip.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    if clip:
        judge(f"real: H3.6M S1 ← demo.mp4 ({len(clip)} frames, walking away)", pose["S1"], poses(np.stack(clip)))


if __name__ == "__main__":
    main()
