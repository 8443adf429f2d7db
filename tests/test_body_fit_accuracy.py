"""Accuracy of the body fit on Anny renders with known pose and shape (models/synthetic), from the
ground-truth 2D joints and from the embedded BlazePose backend's keypoints.

Metrics: 2D reprojection error (px) of the fitted body's 14 OpenPose body joints against the
GT-visible ground-truth joints; 3D MPJPE (mm) of those joints after Procrustes alignment (scale,
rotation, translation) per frame; for the reference, the absolute error of each fitted anny
phenotype value and the standing-height error (cm). Thresholds are the values measured with the
default FitOptions (noted beside each) plus a margin. Run with `-s` to see the numbers.

Where the error comes from (measured): 2D keypoints cannot tell a thigh or arm swung toward the
camera from one swung away, and the L2 pose prior prefers the smaller rotation, so the walking
knees and the waving arm of the driving clip are often fitted on the wrong side (most of its
~65 mm). Height and gender barely show in 2D joints (the scale hides in the depth), so the
shape stays near the average body apart from the proportions the keypoints do show.
"""
import numpy as np
import pytest
import torch
from harness import MEDIAPIPE

from marionette.models.body.anny_model import PHENOTYPE_ORDER, betas_from_phenotype
from marionette.models.body.fit import fit_reference, fit_sequence, project_keypoints
from marionette.models.body.loading import load_body_model
from marionette.models.body.model import to_camera
from marionette.models.synthetic.metrics import procrustes_error

BODY14 = slice(0, 14)
# (2D px, MPJPE-PA mm) limits; measured values in the comments
DRIVING_LIMITS = {"ground truth": (4.0, 90.0),     # 2.6 px, 65 mm
                  "BlazePose": (6.5, 95.0)}        # 4.7 px, 68 mm (BlazePose's own 2D error: 3.9 px)
REFERENCE_LIMITS = {"ground truth": (2.0, 15.0),   # 1.1 px, 6.5 mm
                    "BlazePose": (7.0, 45.0)}      # 5.2 px, 28 mm (BlazePose's own 2D error: 4.7 px)
# (mean |phenotype error|, |height error| cm)
SHAPE_LIMITS = {"ground truth": (0.25, 8.0),       # 0.18, +2.5 cm
                "BlazePose": (0.28, 40.0)}         # 0.21, +28 cm


@pytest.fixture(scope="module")
def model():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def clips():
    from marionette.models.synthetic import render_driving_clip, render_reference
    return {"driving": render_driving_clip(frames=12, width=512, height=512, seed=0),
            "reference": render_reference(width=512, height=768, seed=1)}


@pytest.fixture(scope="module")
def keypoints(clips):
    from marionette.models.pose.blazepose import BlazePoseEstimator
    estimator = BlazePoseEstimator(str(MEDIAPIPE), hands=True, face=False)
    return {(name, source): (clip.pose_frames() if source == "ground truth" else estimator(clip.frames, track=True))
            for name, clip in clips.items() for source in ("ground truth", "BlazePose")}


def fitted_joints(model, seq) -> np.ndarray:
    pose = torch.from_numpy(seq.pose)
    with torch.no_grad():
        out = model.forward(pose, torch.from_numpy(seq.betas))
        return to_camera(out.body18, pose, torch.from_numpy(seq.translation)).numpy()


def errors(model, seq, clip) -> tuple[float, float]:
    """(mean 2D px over GT-visible body joints, mean per-frame MPJPE-PA mm) of the 14 body joints."""
    px = project_keypoints(model, seq)[:, BODY14]
    gt = clip.joints2d[:, BODY14]
    vis = gt[..., 2] > 0
    err2d = float(np.linalg.norm(px - gt[..., :2], axis=-1)[vis].mean())
    pairs = zip(fitted_joints(model, seq)[:, BODY14], clip.joints3d()[:, BODY14])
    pa = np.mean([procrustes_error(p, t) * 1000 for p, t in pairs])
    return err2d, float(pa)


def standing_height(model, betas) -> float:
    with torch.no_grad():
        v = model.forward(model.zero_pose(1), torch.as_tensor(np.asarray(betas, np.float32))).vertices[0].numpy()
    return float(v[:, 1].max() - v[:, 1].min())


@pytest.mark.parametrize("source", ["ground truth", "BlazePose"])
def test_driving_clip_fit_accuracy(model, clips, keypoints, source):
    clip = clips["driving"]
    seq = fit_sequence(model, keypoints[("driving", source)])
    err2d, pa = errors(model, seq, clip)
    print(f"\ndriving from {source}: {clip.num_frames} frames, 2D {err2d:.2f} px (to its targets "
          f"{seq.info['reprojection_px']:.2f} px), MPJPE-PA {pa:.1f} mm")
    assert seq.frame_ok.all()
    limit2d, limit_pa = DRIVING_LIMITS[source]
    assert err2d < limit2d and pa < limit_pa, (err2d, pa)


@pytest.mark.parametrize("source", ["ground truth", "BlazePose"])
def test_reference_fit_recovers_pose_and_shape(model, clips, keypoints, source):
    clip = clips["reference"]
    seq = fit_reference(model, keypoints[("reference", source)][0])
    err2d, pa = errors(model, seq, clip)
    true = betas_from_phenotype(clip.phenotype)
    shape_err = np.abs(seq.betas - true)
    height_cm = (standing_height(model, seq.betas) - standing_height(model, true)) * 100
    print(f"\nreference from {source}: 2D {err2d:.2f} px, MPJPE-PA {pa:.1f} mm, height error {height_cm:+.1f} cm")
    print("  phenotype |error|: " + ", ".join(f"{k} {e:.3f}" for k, e in zip(PHENOTYPE_ORDER, shape_err)))
    limit2d, limit_pa = REFERENCE_LIMITS[source]
    assert err2d < limit2d and pa < limit_pa, (err2d, pa)
    limit_shape, limit_height = SHAPE_LIMITS[source]
    assert shape_err.mean() < limit_shape and abs(height_cm) < limit_height, (shape_err, height_cm)
