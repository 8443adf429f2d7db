"""The body fit on synthetic clips built to provoke its known failures, with the renderer's ground
truth: an arm pointing at the camera (depth ambiguity; BlazePose's 3D world landmarks as prior) and
a full turn on the spot (side and back views; the global orientation must follow smoothly).
Keypoints come from the embedded BlazePose backend, as a user's would. Run with `-s` for figures.
"""
from dataclasses import replace

import numpy as np
import pytest
from harness import MEDIAPIPE

from marionette.models.body.fit import FitOptions, fit_sequence, project_keypoints
from marionette.models.body.loading import load_body_model
from marionette.models.body.posing import pose_sequence
from marionette.models.synthetic.body_metrics import torso_yaw, wrist_depth_error, yaw_report
from marionette.models.synthetic.body_motions import pointing_motion, render_motion, spin_motion

R_SHOULDER, R_WRIST, L_SHOULDER = 2, 4, 5
SWAPPED_SIDES = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)   # OpenPose body, left ↔ right


@pytest.fixture(scope="module")
def model():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def estimator():
    from marionette.models.pose.blazepose import BlazePoseEstimator
    return BlazePoseEstimator(str(MEDIAPIPE), hands=True, face=True)


@pytest.fixture(scope="module")
def pointing(estimator):
    clip = render_motion(pointing_motion(8), "point", width=384, height=384, seed=0)
    return clip, estimator(clip.frames, track=True)


@pytest.fixture(scope="module")
def spin(estimator):
    clip = render_motion(spin_motion(24, 360.0), "spin", width=384, height=384, seed=2)
    return clip, estimator(clip.frames, track=True)


def test_arm_pointing_at_the_camera_is_fitted_in_front_with_the_3d_prior(model, pointing):
    clip, frames = pointing
    assert all(f.world is not None for f in frames)          # the embedded backend's 3D landmarks
    truth = clip.joints3d()
    shoulders = np.linalg.norm(clip.joints2d[:, R_SHOULDER, :2] - clip.joints2d[:, L_SHOULDER, :2], axis=1).mean()
    result = {}
    for label, options in (("2D only", FitOptions(limb_depth_weight=0.0)), ("3D prior", FitOptions())):
        seq = fit_sequence(model, frames, options=options)
        joints = pose_sequence(model, seq).body18
        depth = wrist_depth_error(joints, truth)
        wrist2d = np.linalg.norm(project_keypoints(model, seq)[:, R_WRIST] - clip.joints2d[:, R_WRIST, :2], axis=1)
        result[label] = (depth.mean(), depth.max(), wrist2d.mean() / shoulders,
                         float(np.mean(joints[:, R_WRIST, 2] < joints[:, 1, 2])))
        print(f"\n{label}: wrist depth error (vs the neck) mean {100 * depth.mean():.1f} cm, max "
              f"{100 * depth.max():.1f} cm; wrist 2D error {100 * result[label][2]:.0f}% of the shoulder width; "
              f"wrist in front of the neck in {100 * result[label][3]:.0f}% of frames (truth: all, ~58 cm)")
    mean, worst, wrist2d, in_front = result["3D prior"]
    # measured: 2D only 64 cm mean / 101 cm max, wrist in front in 38 % of frames; 3D prior 5.5 / 8.6 cm, 4 %
    assert mean < 0.07 and worst < 0.11 and wrist2d < 0.06 and in_front == 1.0, result
    assert mean < result["2D only"][0]


def test_orientation_follows_a_full_turn(model, spin):
    clip, frames = spin
    truth = clip.joints3d()
    report = {}
    for source, keypoints in (("ground truth", clip.pose_frames()), ("BlazePose", frames)):
        joints = pose_sequence(model, fit_sequence(model, keypoints)).body18
        report[source] = yaw_report(joints, truth)
        print(f"\n{source}: facing error mean {report[source]['mean_error_deg']:.1f}° max "
              f"{report[source]['max_error_deg']:.1f}°, largest jump beyond the true turn "
              f"{report[source]['max_extra_jump_deg']:.1f}°, wrong-way frames {report[source]['wrong_way_frames']}")
    assert np.ptp(np.unwrap(np.radians(torso_yaw(truth)))) > np.radians(330)   # the clip does turn round
    for source, r in report.items():
        # measured: ground truth 3.0° mean, 9.9° max, 5.0° jump; BlazePose 3.6°, 9.2°, 6.6°
        assert not r["wrong_way_frames"], (source, r)
        assert r["mean_error_deg"] < 5 and r["max_error_deg"] < 13 and r["max_extra_jump_deg"] < 9, (source, r)


def test_frames_read_with_left_and_right_swapped_are_recognised(model, spin):
    """A detector glitch: two frames of a turn with left and right exchanged. Taken literally they
    show the body turned ~90° the other way for two frames; the orientation pass reads them as
    swapped (continuity) and says so."""
    clip, _ = spin
    frames = clip.pose_frames()[:10]
    frames[2], frames[3] = (replace(f, body=f.body[:, list(SWAPPED_SIDES)]) for f in frames[2:4])
    truth = clip.joints3d()[:10]
    literal = yaw_report(pose_sequence(model, fit_sequence(model, frames, options=FitOptions(swap_weight=None))).body18,
                         truth)
    seq = fit_sequence(model, frames)
    read = yaw_report(pose_sequence(model, seq).body18, truth)
    print(f"\nliteral: facing error max {literal['max_error_deg']:.0f}°, jump {literal['max_extra_jump_deg']:.0f}°; "
          f"swap-aware: {read['max_error_deg']:.0f}°, {read['max_extra_jump_deg']:.0f}°; {seq.info.get('message')}")
    assert seq.info["swapped_frames"] == [2, 3] and "swapped in frame(s) 2-3" in seq.info["message"]
    # measured: literal 92° / 75°, swap-aware 9° / 6°
    assert read["max_error_deg"] < 12 and read["max_extra_jump_deg"] < 9, read
    assert literal["max_extra_jump_deg"] > 45, literal
