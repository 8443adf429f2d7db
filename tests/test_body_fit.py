"""Body fit (SMPLify-X style) on keypoints made by the body models themselves, with a known camera."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from marionette.models.body import fit as F
from marionette.models.body.anny_model import pose_from_bone_rotations
from marionette.models.body.fit import FitOptions, fit_options, fit_reference, fit_sequence, project_keypoints
from marionette.models.body.loading import load_body_model
from marionette.models.body.model import axis_angle_to_matrix, to_camera
from marionette.models.errors import MarionetteError, NoPersonError
from marionette.models.pose.types import PoseFrame, empty_frame
from marionette.models.synthetic.actor import procedural_motion
from marionette.models.synthetic.metrics import procrustes_error
from smplx_fixture import small_vertex_ids, write_fixture

W, H, FOCAL = 512, 512, 600.0
FAST = dict(focal=FOCAL, camera_iterations=60, pose_iterations=(20, 50))


@pytest.fixture(scope="module")
def anny():
    return load_body_model("anny")


@pytest.fixture(scope="module")
def smplx_body(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smplx")
    write_fixture(folder)
    with small_vertex_ids():
        return load_body_model("smplx", str(folder))


def orientation(yaw_deg: float, facing: bool = True) -> np.ndarray:
    """Axis-angle of a body facing the camera (or away), turned by `yaw_deg` about its vertical."""
    base = Rotation.from_rotvec(F.FACING if facing else F.AWAY)
    return (base * Rotation.from_rotvec([0.0, math.radians(yaw_deg), 0.0])).as_rotvec().astype(np.float32)


def anny_poses(model, frames: int, motion: str = "arms", yaw: float = 15.0) -> np.ndarray:
    """[T, P] the synthetic actor's motion. 'arms' raises them in the frontal plane: a raised arm
    swung forward instead would project alike and costs less pose prior, so 2D keypoints alone
    cannot tell them apart (see the accuracy test for what that costs on real motion)."""
    poses = np.stack([pose_from_bone_rotations(p) for p in procedural_motion(motion, frames, 12.0, seed=3)])
    poses[:, :3] = orientation(yaw)
    return poses


def camera_points(model, pose, betas, translation, expression=None):
    pose = torch.as_tensor(pose, dtype=torch.float32)
    with torch.no_grad():
        out = model.forward(pose, torch.as_tensor(betas), expression)
        t = torch.as_tensor(translation, dtype=torch.float32).expand(len(pose), 3)
        parts = [to_camera(out.body18, pose, t), to_camera(out.hands.reshape(len(pose), 42, 3), pose, t)]
        parts.append(to_camera(out.face, pose, t) if out.face is not None else None)
    return parts


def project(points: np.ndarray) -> np.ndarray:
    return points[..., :2] / points[..., 2:3] * FOCAL + np.array([W / 2, H / 2])


def model_frames(model, pose, betas, translation, expression=None) -> list[PoseFrame]:
    """PoseFrames (score 1) of the model's own keypoints seen through a FOCAL pinhole."""
    body, hands, face = (None if p is None else project(p.numpy()) for p in
                         camera_points(model, pose, betas, translation, expression))
    ones = lambda a: np.concatenate([a, np.ones(a.shape[:-1] + (1,))], -1)  # noqa: E731
    frames = []
    for i in range(len(body)):
        f = PoseFrame(W, H, ones(body[i])[None], ones(hands[i, :21])[None], ones(hands[i, 21:])[None],
                      ones(face[i])[None] if face is not None else np.zeros((1, 68, 3)))
        frames.append(f)
    return frames


def joints3d(model, seq) -> np.ndarray:
    return camera_points(model, seq.pose, seq.betas, seq.translation,
                         torch.from_numpy(seq.expression) if seq.expression.size else None)[0].numpy()


# ----------------------------------------------------------------------------------- recovery

def test_fit_reference_recovers_the_models_own_keypoints(anny):
    pose = anny_poses(anny, 1)
    betas = np.array([0.45, 0.6, 0.5, 0.55, 0.55, 0.5], np.float32)
    truth = np.array([0.15, 0.25, 3.2], np.float32)
    frame = model_frames(anny, pose, betas, truth)[0]
    seq = fit_reference(anny, frame, FitOptions(**dict(FAST, pose_iterations=(30, 120))))
    assert seq.num_frames == 1 and seq.model == "anny" and seq.frame_ok.all()
    assert seq.camera.focal == FOCAL and (seq.camera.width, seq.camera.height) == (W, H)
    # measured: body 0.14 px, hands 0.05 px, worst body coordinate 0.43 px, MPJPE-PA 5 mm
    assert seq.info["reprojection_px"] < 0.5, seq.info
    assert seq.info["reprojection_px_hands"] < 0.5, seq.info
    fitted, true = joints3d(anny, seq)[0, :14], camera_points(anny, pose, betas, truth)[0].numpy()[0, :14]
    assert procrustes_error(fitted, true) < 0.012
    px = project_keypoints(anny, seq)[0, :18]
    assert np.abs(px - frame.body[0, :, :2]).max() < 1.5


def test_initialisation_puts_a_facing_body_in_front_of_the_camera(anny):
    camera_only = dict(FAST, pose_iterations=(0,), pose_prior_anneal=(1.0,))
    for facing in (True, False):
        pose = np.zeros((1, anny.pose_dim), np.float32)
        pose[0, :3] = orientation(0.0, facing)
        frame = model_frames(anny, pose, anny.default_betas().numpy(), np.array([-0.2, 0.1, 4.0]))[0]
        seq = fit_reference(anny, frame, FitOptions(**camera_only))
        rot = axis_angle_to_matrix(torch.from_numpy(seq.pose[0, :3])).numpy()
        assert 3.4 < seq.translation[0, 2] < 4.6, seq.translation
        assert (rot[2, 2] < -0.9) == facing and (rot[2, 2] > 0.9) == (not facing), rot   # body +z at the camera
        assert rot[1, 1] < -0.9                                                           # head up in the image
        assert seq.info["reprojection_px"] < 3.5      # measured 2.2 / 1.3 px (the start pose bends the limbs)


def test_sequence_is_smooth_shares_one_shape_and_warm_starts_chunks(anny):
    t = 6
    pose = anny_poses(anny, t)
    betas = np.array([0.4, 0.6, 0.5, 0.5, 0.6, 0.5], np.float32)
    truth = np.array([[0.1 + 0.02 * i, 0.2, 3.5] for i in range(t)], np.float32)
    frames = model_frames(anny, pose, betas, truth)
    calls = []
    seq = fit_sequence(anny, frames, options=FitOptions(chunk=3, shape_frames=3, **FAST),
                       on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 6), (3, 6), (6, 6)]      # shape stage, then one call per chunk
    assert seq.pose.shape == (t, anny.pose_dim) and seq.betas.shape == (6,) and seq.frame_ok.all()
    assert seq.info["reprojection_px"] < 2.5, seq.info      # measured 1.7 px
    steps = np.linalg.norm(np.diff(seq.translation, axis=0), axis=1)
    assert steps.max() < 0.06, seq.translation              # no jump at the chunk border (true 2 cm, max 2.7)
    errors = [procrustes_error(a[:14], b[:14]) for a, b in
              zip(joints3d(anny, seq), camera_points(anny, pose, betas, truth)[0].numpy())]
    assert max(errors) < 0.045, errors                      # measured 27-32 mm (few iterations)


def test_given_betas_are_kept(anny):
    betas = np.array([0.2, 0.7, 0.4, 0.6, 0.3, 0.5], np.float32)
    frames = model_frames(anny, anny_poses(anny, 2), betas, np.array([0.0, 0.2, 3.0]))
    seq = fit_sequence(anny, frames, betas=betas, options=FitOptions(**dict(FAST, pose_iterations=(5, 5))))
    np.testing.assert_array_equal(seq.betas, betas)


def test_smplx_backend_fits_body_and_face(smplx_body):
    pose = smplx_body.zero_pose(1).numpy()
    pose[0, :3] = orientation(10.0)
    names = smplx_body.pose_names
    for name, rotvec in (("left_shoulder", (0, 0, -0.9)), ("right_shoulder", (0, 0, 0.9)),
                         ("left_elbow", (0, -0.5, 0)), ("left_knee", (0.3, 0, 0)), ("jaw", (0.2, 0, 0))):
        i = names.index(name)
        pose[0, 3 * i:3 * i + 3] = rotvec
    betas = np.linspace(-1, 1, smplx_body.num_betas).astype(np.float32)
    expression = torch.linspace(-0.5, 0.5, smplx_body.num_expression)
    frame = model_frames(smplx_body, pose, betas, np.array([0.0, 0.1, 3.0]), expression)[0]
    seq = fit_reference(smplx_body, frame, FitOptions(**FAST))
    assert seq.model == "smplx" and seq.expression.shape == (smplx_body.num_expression,)
    assert np.abs(seq.expression).max() > 0       # face points exist, so expression is fitted
    # measured: body 1.9 px, face 3.6 px (a coarse 330-vertex stand-in for SMPL-X)
    assert seq.info["reprojection_px"] < 3.0 and seq.info["reprojection_px_face"] < 5.0, seq.info
    body_only = PoseFrame(W, H, frame.body, frame.left_hand * 0, frame.right_hand * 0, frame.face * 0)
    plain = fit_reference(smplx_body, body_only, FitOptions(**dict(FAST, pose_iterations=(5, 5))))
    assert not plain.expression.any()             # no face points: expression stays 0


# ------------------------------------------------------------------------------ missing people

def test_missing_frames_are_interpolated_and_flagged(anny):
    pose = anny_poses(anny, 3)
    truth = np.array([[0.0, 0.2, 3.0], [0.0, 0.2, 3.0], [0.3, 0.2, 3.0]], np.float32)
    made = model_frames(anny, pose, anny.default_betas().numpy(), truth)
    few = made[2].body.copy()
    few[0, 3:, 2] = 0                                  # 3 body keypoints: not enough to fit
    frames = [made[0], empty_frame(W, H), made[2], PoseFrame(W, H, few, made[2].left_hand * 0,
                                                             made[2].right_hand * 0, made[2].face)]
    seq = fit_sequence(anny, frames, options=FitOptions(**dict(FAST, pose_iterations=(10, 10))))
    assert seq.frame_ok.tolist() == [True, False, True, False]
    assert seq.info["interpolated"] == 2 and "interpolated 2 frames" in seq.info["message"]
    np.testing.assert_allclose(seq.translation[1], (seq.translation[0] + seq.translation[2]) / 2, atol=1e-5)
    np.testing.assert_array_equal(seq.pose[3], seq.pose[2])
    np.testing.assert_array_equal(seq.translation[3], seq.translation[2])


def test_nobody_anywhere_is_a_clear_error(anny):
    with pytest.raises(NoPersonError, match="Nobody"):
        fit_sequence(anny, [empty_frame(W, H), empty_frame(W, H, people=1)])
    with pytest.raises(NoPersonError):
        fit_reference(anny, empty_frame(W, H))


def test_orientation_blend_takes_the_short_way_round():
    # 10° either side of a half turn about x, written on the two branches of axis-angle
    a, b = np.array([math.pi - 0.17, 0, 0]), np.array([-(math.pi - 0.17), 0, 0])
    mid = F._blend_orientation(a, b, 0.5)
    angle = (Rotation.from_rotvec(mid).inv() * Rotation.from_rotvec([math.pi, 0, 0])).magnitude()
    assert angle < 1e-4
    assert np.linalg.norm(mid - a) < 0.2          # written on the branch of the first frame


# ------------------------------------------------------------------------ control and behaviour

def test_cancel_from_on_progress_propagates(anny):
    frames = model_frames(anny, anny_poses(anny, 2), anny.default_betas().numpy(), np.array([0.0, 0.2, 3.0]))

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        fit_sequence(anny, frames, options=FitOptions(**dict(FAST, chunk=1, pose_iterations=(2, 2))),
                     on_progress=cancel)


def test_two_runs_give_identical_arrays(anny):
    frames = model_frames(anny, anny_poses(anny, 2), anny.default_betas().numpy(), np.array([0.1, 0.2, 3.0]))
    opts = FitOptions(**dict(FAST, pose_iterations=(8, 8)))
    a, b = fit_sequence(anny, frames, options=opts), fit_sequence(anny, frames, options=opts)
    for name in ("pose", "translation", "betas", "frame_ok"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_adam_optimiser_also_fits(anny):
    frame = model_frames(anny, anny_poses(anny, 1), anny.default_betas().numpy(), np.array([0.0, 0.2, 3.0]))[0]
    seq = fit_reference(anny, frame, FitOptions(**dict(FAST, optimizer="adam", lr=0.03, pose_iterations=(60,),
                                                       pose_prior_anneal=(1.0,))))
    assert seq.info["reprojection_px"] < 2.5, seq.info     # measured 1.0 px


def rescaled(frame: PoseFrame, width: int, height: int, scale: float) -> PoseFrame:
    """The frame's keypoints about its centre, scaled, on a canvas of another size."""
    centre, new = np.array([frame.width / 2, frame.height / 2]), np.array([width / 2, height / 2])
    moved = frame.map_xy(lambda xy: (xy - centre) * scale + new)
    return PoseFrame(width, height, moved.body, moved.left_hand, moved.right_hand, moved.face)


def test_same_keypoints_fit_alike_at_any_resolution(anny):
    """A 270×480 canvas and the same keypoints ×4 on 1080×1920: the robust loss scales with the
    person, the default focal with the image, so the fits agree (a fixed 100 px GMoF scale did not)."""
    pose = anny_poses(anny, 1)
    frame = model_frames(anny, pose, anny.default_betas().numpy(), np.array([0.1, 0.2, 3.0]))[0]
    body = frame.body.copy()
    body[0, 4, :2] += (60.0, -40.0)                     # an outlier wrist: where the robust scale matters
    frame = PoseFrame(W, H, body, frame.left_hand, frame.right_hand, frame.face)
    options = dict(camera_iterations=60, pose_iterations=(20, 50))
    small = fit_reference(anny, rescaled(frame, 270, 480, 0.5), FitOptions(**options))
    large = fit_reference(anny, rescaled(frame, 1080, 1920, 2.0), FitOptions(**options))
    assert large.camera.focal == pytest.approx(4 * small.camera.focal)
    np.testing.assert_allclose(large.pose, small.pose, atol=2e-3)
    np.testing.assert_allclose(large.translation, small.translation, atol=2e-3)
    assert large.info["reprojection_px"] == pytest.approx(4 * small.info["reprojection_px"], rel=0.02)
    assert large.info["reprojection_relative"] == pytest.approx(small.info["reprojection_relative"], rel=0.02)


def test_report_has_parts_relative_to_body_size_and_names_frames_with_limbs_off(anny):
    pose = anny_poses(anny, 3)
    frames = model_frames(anny, pose, anny.default_betas().numpy(), np.array([0.0, 0.2, 3.0]))
    face = np.zeros((1, 68, 3), np.float32)
    face[0, :, :2], face[0, :, 2] = (250.0, 120.0), 1.0            # face points Anny cannot fit
    body = frames[1].body.copy()
    body[0, 7, :2] += (0.0, 150.0)                                  # frame 1: the left wrist far off
    frames = [PoseFrame(W, H, f.body if i != 1 else body, f.left_hand, f.right_hand, face)
              for i, f in enumerate(frames)]
    seq = fit_sequence(anny, frames, options=FitOptions(**dict(FAST, pose_iterations=(10, 20))))
    parts = seq.info["reprojection_parts"]
    assert set(parts) == {"torso", "head", "arms", "legs", "hands"}           # no face figure for Anny
    assert "reprojection_px_face" not in seq.info
    assert all(0 <= p["relative"] < 1 and p["px"] >= 0 for p in parts.values())
    assert parts["arms"]["relative"] > parts["torso"]["relative"]
    assert seq.info["frames_limbs_off"] == [1]
    assert "in 1 frame(s): 1" in seq.info["message"] and "10% of the body size" in seq.info["message"]


def test_default_focal_is_a_50_degree_view_across_the_longer_side():
    assert F.default_focal(1000, 500) == pytest.approx(500 / math.tan(math.radians(25)))
    assert F.default_focal(400, 800) == F.default_focal(800, 400)


def test_fit_options_from_node_controls():
    o = fit_options(iterations=50, temporal_smoothing=2.0)
    base = FitOptions()
    assert o.camera_iterations == 50 and o.pose_iterations == (50,) * len(base.pose_iterations)
    assert o.smooth_pose_weight == 2 * base.smooth_pose_weight
    assert o.smooth_translation_weight == 2 * base.smooth_translation_weight
    with pytest.raises(MarionetteError):
        fit_options(iterations=0)
    with pytest.raises(MarionetteError):
        fit_options(temporal_smoothing=-1)


def test_bad_inputs_are_clear_errors(anny):
    frame = model_frames(anny, anny_poses(anny, 1), anny.default_betas().numpy(), np.array([0.0, 0.2, 3.0]))[0]
    other = PoseFrame(W + 2, H, frame.body, frame.left_hand, frame.right_hand, frame.face)
    with pytest.raises(MarionetteError, match="canvas sizes"):
        fit_sequence(anny, [frame, other])
    with pytest.raises(MarionetteError, match="non-empty list"):
        fit_sequence(anny, [])
    with pytest.raises(MarionetteError, match="shape values"):
        fit_sequence(anny, [frame], betas=np.zeros(3))
    with pytest.raises(MarionetteError, match="optimizer"):
        fit_reference(anny, frame, FitOptions(optimizer="sgd"))
    with pytest.raises(MarionetteError, match="one PoseFrame"):
        fit_reference(anny, [frame])
