"""PoseAlign's trust verdict on a turning clip from our generator and on real Human3.6M frames
(../shared/realdata), with the embedded pose backend on the real ones. Thresholds: models/pose/align.py
TRUST_LIMITS; figures: benchmarks/align_trust.py."""
import glob
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from harness import MEDIAPIPE, ROOT

from marionette.models.pose.align import apply_alignment, fit_alignment, judge_alignment
from marionette.models.pose.types import PoseFrame

H36M = ROOT.parent / "shared" / "realdata" / "mmpose_testdata" / "h36m"


def judged(ref, driving):
    fit = fit_alignment(ref, driving)
    return judge_alignment(fit, ref, apply_alignment(fit, driving))


@pytest.fixture(scope="module")
def turning():
    from marionette.models.synthetic import render_driving_clip, render_reference
    reference = render_reference(width=384, height=576, seed=1)
    clip = render_driving_clip(frames=12, width=384, height=384, motion="turn", seed=3)
    return SimpleNamespace(ref=reference.pose_frames()[0], poses=clip.pose_frames(), reference=reference, clip=clip)


def cut_at(frame: PoseFrame, height: int) -> PoseFrame:
    """The frame's photo cut at `height` pixels: keypoints below it are gone."""
    body = frame.body.copy()
    body[body[..., 1] > height] = 0.0
    return PoseFrame(frame.width, height, body, frame.left_hand, frame.right_hand, frame.face)


def test_a_turning_clip_on_a_whole_body_reference_is_trusted(turning):
    ref, clip = turning.ref, turning.poses
    trust = judged(ref, clip)
    assert trust.level == "ok", trust.describe()
    assert trust.residual < 0.2 and trust.neck < 0.15 and abs(trust.torso - 1) < 0.1 and trust.off_canvas == 0


def test_the_embedded_poses_of_the_turning_clip_are_trusted(turning):
    from marionette.models.pose.blazepose import BlazePoseEstimator
    estimator = BlazePoseEstimator(MEDIAPIPE, hands=False, face=False)
    ref = estimator(turning.reference.frames, track=False)[0]
    trust = judged(ref, estimator(turning.clip.frames))
    assert trust.level == "ok" and trust.residual < 0.2 and trust.off_canvas < 0.02, trust.describe()


def test_a_half_body_reference_makes_the_turning_clip_doubtful(turning):
    ref, clip = turning.ref, turning.poses
    hips = ref.body[0, [8, 11], 1].max()
    trust = judged(cut_at(ref, int(hips + 20)), clip)
    assert trust.level == "warn" and trust.off_canvas > 0.15
    assert any("outside the reference image" in r for r in trust.reasons), trust.describe()


def test_a_dancer_leaving_the_reference_position_is_named(turning):
    ref, clip = turning.ref, turning.poses
    wandering = []
    for i, frame in enumerate(clip):              # 0.8 frame widths sideways over the clip
        body = frame.body.copy()
        body[..., 0] += np.where(body[..., 2] > 0, 300.0 * i / (len(clip) - 1), 0.0)
        wandering.append(PoseFrame(frame.width * 2, frame.height, body, frame.left_hand, frame.right_hand,
                                   frame.face))
    trust = judged(ref, wandering)
    assert trust.neck > 0.5 and any("aligned neck" in r for r in trust.reasons) and trust.level != "ok"


@pytest.fixture(scope="module")
def h36m():
    files = sorted(glob.glob(str(H36M / "S*" / "*" / "*.jpg")))
    if not files:
        pytest.skip(f"no Human3.6M frames in {H36M} (the shared real-data folder beside the repository)")
    from marionette.models.pose.blazepose import BlazePoseEstimator
    estimator = BlazePoseEstimator(MEDIAPIPE, hands=False, face=False)
    images = {os.path.basename(f).split("_")[0]: cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files}
    poses = {k: estimator(np.ascontiguousarray(v[None]), track=False)[0] for k, v in images.items()}
    top = np.ascontiguousarray(images["S1"][: images["S1"].shape[0] // 2])
    poses["S1 top"] = estimator(top[None], track=False)[0]
    return poses


def test_real_standing_people_are_trusted_and_a_half_photo_is_not(h36m):
    for other in ("S7", "S8"):
        trust = judged(h36m["S1"], [h36m[other]])
        assert trust.level == "ok", (other, trust.describe())
    trust = judged(h36m["S1 top"], [h36m["S7"]])
    assert trust.level == "warn" and trust.off_canvas > 0.15, trust.describe()
