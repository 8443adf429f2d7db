"""The body fit on real people with 3D ground truth: the 4 Human3.6M studio frames of
../shared/realdata (mmpose's test data; skipped where that folder is absent).

Protocol: the embedded BlazePose backend on the whole frame (one person each), the Anny fit of that
frame (fit_reference), then per frame the MPJPE after Procrustes alignment (PA-MPJPE, mm) of the 12
limb joints both skeletons name (shoulders, elbows, wrists, hips, knees, ankles) against the
annotated camera-space joints, and the torso's facing error. Human3.6M's hip joints sit lower and
wider than the COCO-style hips Anny regresses, so a few centimetres of the figure are definition,
not error. Run with `-s` to see the figures.
"""
import json

import cv2
import numpy as np
import pytest
from harness import MEDIAPIPE
from realdata_pose import REALDATA

from marionette.models.body.fit import FitOptions, fit_reference
from marionette.models.body.loading import load_body_model
from marionette.models.body.posing import pose_sequence
from marionette.models.synthetic.body_metrics import angle_difference, torso_yaw
from marionette.models.synthetic.metrics import procrustes_error

H36M = REALDATA / "h36m"
# OpenPose-18 body index → Human3.6M-17 joint (the standard order: 1-3 right leg, 4-6 left leg,
# 11-13 left arm, 14-16 right arm; the json's category names have the legs' sides the other way
# round, which the images contradict: on S1's back view joint 1 is on the image's right)
H36M_OF_OPENPOSE = {2: 14, 3: 15, 4: 16, 5: 11, 6: 12, 7: 13, 8: 1, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6}
pytestmark = pytest.mark.skipif(not (H36M / "test_h36m_body3d.npz").is_file(),
                                reason=f"Human3.6M frames not found at {H36M} (the project's ../shared/realdata; "
                                       "set MARIONETTE_REALDATA to its folder)")


@pytest.fixture(scope="module")
def h36m():
    """[(name, RGB image, [17, 3] camera-space joints in metres)] of the 4 frames."""
    data = np.load(H36M / "test_h36m_body3d.npz")
    out = []
    for name, joints in zip(data["imgname"], data["S"]):
        image = cv2.imread(str(H36M / str(name)), cv2.IMREAD_COLOR)
        assert image is not None, name
        out.append((str(name).split("/")[-1], np.ascontiguousarray(image[..., ::-1]), joints[:, :3]))
    return out


@pytest.fixture(scope="module")
def poses(h36m):
    from marionette.models.pose.blazepose import BlazePoseEstimator
    estimator = BlazePoseEstimator(str(MEDIAPIPE), hands=True, face=True)
    return [estimator(image[None], track=False)[0] for _, image, _ in h36m]


def errors(model, seq, truth) -> tuple[float, float]:
    """(PA-MPJPE mm over the 12 shared joints, torso facing error in degrees)."""
    joints = pose_sequence(model, seq).body18[0]
    ours = np.array([joints[k] for k in H36M_OF_OPENPOSE])
    theirs = np.array([truth[j] for j in H36M_OF_OPENPOSE.values()])
    as18 = np.zeros((18, 3))
    for k, j in H36M_OF_OPENPOSE.items():
        as18[k] = truth[j]
    facing = abs(float(angle_difference(torso_yaw(joints), torso_yaw(as18))))
    return procrustes_error(ours, theirs) * 1000, facing


def test_pa_mpjpe_on_human36m(h36m, poses):
    assert all(p.num_people == 1 for p in poses)
    model = load_body_model("anny")
    rows = {}
    for label, options in (("2D only", FitOptions(limb_depth_weight=0.0)), ("3D prior", FitOptions())):
        rows[label] = [errors(model, fit_reference(model, frame, options), truth)
                       for frame, (_, _, truth) in zip(poses, h36m)]
    for label, values in rows.items():
        pa = [v[0] for v in values]
        print(f"\n{label}: PA-MPJPE {np.mean(pa):.1f} mm over {len(pa)} frames (" +
              ", ".join(f"{n.split('.')[0]} {e:.0f}" for (n, _, _), e in zip(h36m, pa)) +
              "); facing error " + ", ".join(f"{v[1]:.0f}°" for v in values))
    pa = np.array([v[0] for v in rows["3D prior"]])
    facing = np.array([v[1] for v in rows["3D prior"]])
    # measured on one CPU: 2D only 91.8 mm (65, 153, 102, 47); 3D prior 91.3 mm (68, 149, 102, 47), facing
    # 1-17°; on another (same code, same wheels): 2D only 104.1 (67, 207, 96, 47), 3D prior 103.5 (69, 194,
    # 103, 47), facing 2-33°: the sitting frame's fit is unstable under float rounding (an open problem of
    # issue 10); the bounds hold on both, the other frames keep the tight ones
    assert np.mean(pa) < 106 and pa.max() < 200, pa
    steady = [i for i, (name, _, _) in enumerate(h36m) if not name.startswith("S5_SittingDown")]
    assert pa[steady].max() < 110 and facing[steady].max() < 20, (pa, facing)  # the back view of S1 too
    assert facing.max() < 36, facing