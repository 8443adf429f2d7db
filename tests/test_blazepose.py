"""The embedded BlazePose backend: ROI maths, layout tables, and the real .tflite models on renders.

Fixtures in tests/data: `blazepose_person.png` (255×199, an anny body rendered with pyrender, arms
up with bent elbows) with its ground truth in `blazepose_person.json` (anny's COCO regressor
projected through the render camera, OpenPose-18 order, neck = shoulder mean), and
`blazepose_face.png` (128², a close-up of the same body's face).
"""
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from marionette.models.errors import MarionetteError
from marionette.models.pose.blazepose import MODEL_FILES, BlazePoseEstimator, required_files
from marionette.models.pose.blazepose import body as B
from marionette.models.pose.blazepose import face as F
from marionette.models.pose.blazepose import hands as Hd
from marionette.models.pose.blazepose import layout as L
from marionette.models.pose.blazepose import roi as R
from marionette.models.pose.blazepose.runner import load_model
from marionette.models.pose.types import OPENPOSE_BODY
from marionette.models.vision import ssd

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def _model_dir() -> str | None:
    for d in (ROOT / "models" / "mediapipe", Path(os.environ.get("MARIONETTE_TFLITE", "/nonexistent"))):
        if all((d / f).is_file() for f in MODEL_FILES):
            return str(d)
    return None


MODEL_DIR = _model_dir()
needs_models = pytest.mark.skipif(MODEL_DIR is None, reason="MediaPipe .tflite files not available")


def _rgb(name: str) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)[..., ::-1])


@pytest.fixture(scope="module")
def person():
    gt = json.loads((DATA / "blazepose_person.json").read_text())
    return _rgb("blazepose_person.png"), gt


@pytest.fixture(scope="module")
def estimator():
    return BlazePoseEstimator(MODEL_DIR, num_threads=1)


def _diag(gt) -> float:
    x0, y0, x1, y1 = gt["bbox"]
    return math.hypot(x1 - x0, y1 - y0)


# ---------------------------------------------------------------- ROI maths

def test_alignment_rotation_follows_mediapipe_convention():
    up = R.alignment_rect(np.array([50.0, 80.0]), np.array([50.0, 30.0]), 90.0)
    assert up.angle == pytest.approx(0.0, abs=1e-9)
    assert up.width == pytest.approx(100.0) and (up.cx, up.cy) == (50.0, 80.0)
    right = R.alignment_rect(np.array([0.0, 0.0]), np.array([10.0, 0.0]), 90.0)
    assert right.angle == pytest.approx(math.pi / 2)
    # the crop's "up" (top centre) lands on the end point
    top = R.project_to_frame(np.array([[128.0, 0.0]]), right, 256)[0]
    assert top == pytest.approx([10.0, 0.0], abs=1e-9)
    assert R.normalize_radians(3 * math.pi) == pytest.approx(-math.pi)


def test_transform_shifts_along_the_rotated_axis_and_squares():
    rect = R.Rect(100.0, 100.0, 40.0, 20.0, math.pi / 2)
    out = R.transform_rect(rect, 2.0, shift_y=-0.5)
    # shift −0.5·height along the rect's y, which points to the frame's −x after a 90° turn
    assert (out.cx, out.cy) == pytest.approx((110.0, 100.0))
    assert out.width == out.height == pytest.approx(80.0)


@pytest.mark.parametrize("angle", [0.0, 0.7, -2.5, math.pi])
def test_projection_round_trip(angle):
    rect = R.Rect(123.4, 56.7, 88.0, 88.0, angle)
    pts = np.random.default_rng(0).uniform(-20, 300, (50, 2))
    back = R.project_to_frame(R.project_to_crop(pts, rect, 224), rect, 224)
    np.testing.assert_allclose(back, pts, atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 0.6, -1.9])
def test_crop_samples_where_the_projection_says(angle):
    """A bright dot drawn in the frame shows up in the crop where project_to_crop puts it."""
    img = np.zeros((120, 160, 3), np.uint8)
    dot = np.array([97.5, 41.5])  # centre of pixel (97, 41)
    img[41, 97] = 255
    rect = R.Rect(90.0, 50.0, 32.0, 32.0, angle)
    tensor = R.crop(img, rect, 128)[0, ..., 0]
    peak = np.unravel_index(np.argmax(cv2.GaussianBlur(tensor, (0, 0), 1.5)), tensor.shape)
    expected = R.project_to_crop(dot[None], rect, 128)[0]
    assert np.hypot(peak[1] + 0.5 - expected[0], peak[0] + 0.5 - expected[1]) < 1.5
    assert tensor.max() <= 1.0 and tensor.min() >= 0.0


def test_crop_value_range_and_borders():
    img = np.full((10, 10, 3), 255, np.uint8)
    letterbox = R.letterbox_rect(10, 20)
    z = R.crop(np.full((10, 20, 3), 255, np.uint8), letterbox, 32, (-1.0, 1.0), border="zero")[0]
    assert z[0, 16, 0] == pytest.approx(-1.0) and z[16, 16, 0] == pytest.approx(1.0)
    rep = R.crop(img, R.Rect(5.0, 5.0, 40.0, 40.0), 16)[0]
    assert rep.min() == pytest.approx(1.0)


def test_rotated_bbox_recovers_a_rotated_square():
    angle = 0.4
    c, s = math.cos(angle), math.sin(angle)
    corners = np.array([[-10, -5], [10, -5], [10, 5], [-10, 5]], float) @ np.array([[c, s], [-s, c]]) + [60, 40]
    rect = R.rotated_bbox_rect(corners, angle)
    assert (rect.cx, rect.cy, rect.width, rect.height) == pytest.approx((60, 40, 20, 10))


def test_hand_rect_from_pose_points_up_the_hand():
    wrist, pinky, index = np.array([100.0, 100.0]), np.array([95.0, 80.0]), np.array([105.0, 80.0])
    rect = Hd.rect_from_pose(wrist, pinky, index)
    assert rect.angle == pytest.approx(math.atan2(5 / 3, 20), abs=1e-6)  # fingers slightly to the right
    assert rect.width == pytest.approx(2.7 * 2 * math.hypot(5 / 3, 20))
    assert rect.cy < 80.0  # shifted towards the fingers


def test_hand_tracking_rect_from_landmarks():
    """An upright open hand: the ROI is unrotated, centred above the wrist, and holds every point."""
    xs = np.array([0, -30, -35, -38, -40, -15, -15, -15, -15, 0, 0, 0, 0, 15, 15, 15, 15, 28, 30, 31, 32], float)
    ys = np.array([0, -10, -25, -38, -48, -40, -60, -72, -82, -42, -64, -77, -88, -40, -60, -72, -81, -36, -52,
                   -62, -70], float)
    lms = np.stack([xs + 200, ys + 300], 1)
    rect = Hd.rect_from_landmarks(lms)
    assert rect.angle == pytest.approx(0.0, abs=1e-6)
    assert rect.cx == pytest.approx(200.0, abs=5) and rect.cy < 300 - 20
    local = R.project_to_crop(lms, rect, 224)
    assert (local > 0).all() and (local < 224).all()


def test_tracking_consistency_rules():
    rect = R.Rect(50.0, 50.0, 40.0, 40.0, 0.0)
    lms = np.array([[45.0, 45.0], [55.0, 55.0]])
    assert R.tracking_consistent(rect, lms, rect, 40, 0.2, 0.4, -0.1)
    moved = R.Rect(60.0, 50.0, 40.0, 40.0, 0.0)
    assert not R.tracking_consistent(moved, lms, rect, 40, 0.2, 0.4, -0.1)
    turned = R.Rect(50.0, 50.0, 40.0, 40.0, math.radians(50))
    assert not R.tracking_consistent(turned, lms, rect, 40, 0.2, 0.4, -0.1)
    assert not R.tracking_consistent(rect, np.array([[69.0, 50.0]]), rect, 40, 0.2, 0.4, -0.1)


def test_heatmap_refinement_moves_to_the_weighted_peak():
    hm = np.full((64, 64, 1), -20.0, np.float32)
    hm[10, 20, 0] = hm[10, 21, 0] = 20.0
    out = B.refine_from_heatmap(np.array([[81.0, 41.0]]), hm)
    assert out[0] == pytest.approx([20.5 * 4, 10 * 4], abs=1e-3)
    weak = B.refine_from_heatmap(np.array([[81.0, 41.0]]), np.full((64, 64, 1), -5.0, np.float32))
    assert weak[0] == pytest.approx([81.0, 41.0])


# ---------------------------------------------------------------- layout tables

def test_body_mapping_names_the_same_joints():
    for k, src in enumerate(L.OPENPOSE_FROM_BLAZEPOSE):
        name = OPENPOSE_BODY[k]
        if src == L.NECK:
            assert name == "neck"
            continue
        side, _, joint = name.partition("_")
        expected = "nose" if name == "nose" else {"l": "left_", "r": "right_"}[side] + joint
        assert L.BLAZEPOSE_33[src] == expected


def test_body18_neck_is_the_shoulder_mean():
    xy = np.arange(66, dtype=float).reshape(33, 2)
    scores = np.linspace(0.1, 0.9, 33)
    out = L.body18(xy, scores)
    assert out.shape == (18, 3)
    assert out[1, :2] == pytest.approx((xy[11] + xy[12]) / 2)
    assert out[1, 2] == pytest.approx(min(scores[11], scores[12]))
    assert out[4, :2] == pytest.approx(xy[16]) and out[7, :2] == pytest.approx(xy[15])
    with pytest.raises(ValueError):
        L.body18(xy[:17], scores[:17])


def test_ibug_table_shape_and_symmetry():
    table, mirror = F.IBUG68_FROM_MESH, F.IBUG68_MIRROR
    assert len(table) == 68 and len(set(table)) == 68
    assert all(0 <= i < F.NUM_LANDMARKS for i in table)
    assert sorted(mirror) == list(range(68))
    assert all(mirror[mirror[i]] == i for i in range(68))  # an involution
    midline = [i for i in range(68) if mirror[i] == i]
    assert midline == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    # the eye outer corners MediaPipe uses for the face rotation are iBUG 36 and 45
    assert table[36] == F.MESH_RIGHT_EYE_OUTER and table[45] == F.MESH_LEFT_EYE_OUTER


# ---------------------------------------------------------------- the real models

def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(MarionetteError, match="pose_landmark_full.tflite"):
        BlazePoseEstimator(str(tmp_path))
    assert set(required_files(hands=False, face=False)) < set(MODEL_FILES)


@needs_models
def test_a_wrong_model_file_is_refused():
    with pytest.raises(MarionetteError, match="face_landmark.tflite is not the expected"):
        load_model(os.path.join(MODEL_DIR, "face_landmark.tflite"), 256, 5)


@needs_models
def test_bad_frames_are_rejected(estimator):
    with pytest.raises(MarionetteError):
        estimator(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(MarionetteError):
        estimator(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(MarionetteError):
        estimator(np.zeros((1, 4, 4, 4), np.uint8))


@needs_models
def test_detector_decoding_matches_the_ground_truth(person):
    img, gt = person
    detector = B.PoseDetector(os.path.join(MODEL_DIR, "pose_detection.tflite"), num_threads=1)
    assert len(detector.anchors) == 2254
    found = detector(img)
    assert found and found[0][0] > 0.9
    rect = found[0][1]
    mid_hip = (np.array(gt["body18"][8]) + np.array(gt["body18"][11])) / 2
    assert np.hypot(rect.cx - mid_hip[0], rect.cy - mid_hip[1]) < 0.06 * _diag(gt)
    assert abs(rect.angle) < 0.2  # standing upright
    assert 1.0 < rect.width / (gt["bbox"][3] - gt["bbox"][1]) < 2.0


@needs_models
def test_person_render(estimator, person):
    img, gt = person
    (frame,) = estimator(img[None], track=False)
    assert (frame.width, frame.height, frame.num_people) == (199, 255, 1)
    err = np.linalg.norm(frame.body[0, :, :2] - np.array(gt["body18"]), axis=1) / _diag(gt)
    assert (err < 0.1).mean() == 1.0 and (err < 0.05).mean() >= 0.9 and err.mean() < 0.03
    for part in frame.parts().values():
        assert 0.0 <= part[..., 2].min() and part[..., 2].max() <= 1.0  # probabilities, not logits
    assert frame.body[0, :, 2].min() > 0.9
    for part, wrist in ((frame.left_hand, 7), (frame.right_hand, 4)):
        assert part[0, :, 2].min() > 0.8  # the hand flag is already a probability: no second sigmoid
        # the hand model's wrist agrees with the body model's
        assert np.linalg.norm(part[0, 0, :2] - frame.body[0, wrist, :2]) < 0.04 * _diag(gt)
    face = frame.face[0]
    assert face[:, 2].min() > 0.9
    # jaw runs from the image left (subject's right) to the image right, chin at the bottom
    assert face[0, 0] < face[8, 0] < face[16, 0] and face[8, 1] > face[30, 1] > face[27, 1]
    nose_gt = np.array(gt["body18"][0])
    assert np.linalg.norm(face[30, :2] - nose_gt) < 0.03 * _diag(gt)


@needs_models
def test_face_table_is_mirror_consistent():
    """On a face and its mirror image, each iBUG point lands on its mirror partner."""
    img = _rgb("blazepose_face.png")
    model = F.FaceLandmarker(os.path.join(MODEL_DIR, "face_landmark.tflite"), num_threads=1)
    rect = R.Rect(64.0, 64.0, 128.0, 128.0)

    def ibug(image):
        first = model.mesh(image, rect)
        return model.mesh(image, F.rect_from_mesh(first.mesh))

    a, b = ibug(img), ibug(np.ascontiguousarray(img[:, ::-1]))
    assert a.presence > 0.9 and b.presence > 0.9
    mirrored = b.ibug68.copy()
    mirrored[:, 0] = 128.0 - mirrored[:, 0]
    iod = np.linalg.norm(a.ibug68[36] - a.ibug68[45])
    err = np.linalg.norm(mirrored[list(F.IBUG68_MIRROR)] - a.ibug68, axis=1) / iod
    assert err.max() < 0.1
    assert (np.linalg.norm(mirrored - a.ibug68, axis=1) / iod).mean() > 0.3  # the permutation matters


@needs_models
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 7, 13, 3), (1, 301, 199, 3)])
def test_no_person_gives_empty_frames(estimator, shape):
    frames = estimator(np.zeros(shape, np.uint8))
    assert len(frames) == shape[0]
    assert all(f.num_people == 0 and (f.width, f.height) == (shape[2], shape[1]) for f in frames)


def test_search_windows_cover_the_frame_with_overlap():
    for h, w, side in ((360, 640, 360.0), (360, 640, 180.0), (301, 199, 99.5), (100, 100, 200.0)):
        windows = B.search_windows(h, w, side)
        xs = sorted({r.cx for r in windows})
        ys = sorted({r.cy for r in windows})
        assert len(windows) == len(xs) * len(ys)
        assert all(r.width == r.height == side for r in windows)
        for centres, length in ((xs, w), (ys, h)):
            assert centres[0] - side / 2 <= 0 and centres[-1] + side / 2 >= length
            assert all(b - a <= side * 2 / 3 + 1e-9 for a, b in zip(centres, centres[1:]))


@needs_models
def test_small_person_is_found_by_the_window_search(person):
    img, gt = person
    canvas = np.empty((600, 600, 3), np.uint8)
    canvas[:] = img[5, 5]  # the wall colour
    small = cv2.resize(img, (100, 128), interpolation=cv2.INTER_AREA)  # about 18 % of the frame height
    canvas[400:528, 60:160] = small
    plain = BlazePoseEstimator(MODEL_DIR, hands=False, face=False, num_threads=1, zoom=False)
    zoomed = BlazePoseEstimator(MODEL_DIR, hands=False, face=False, num_threads=1)
    assert plain(canvas[None])[0].num_people == 0
    (frame,) = zoomed(canvas[None])
    assert frame.num_people == 1
    expected = np.array(gt["body18"]) * [100 / 199, 128 / 255] + [60, 400]
    err = np.linalg.norm(frame.body[0, :14, :2] - expected[:14], axis=1)
    assert err.max() < 0.1 * 128 and err.mean() < 0.04 * 128


@needs_models
def test_letterbox_padding_moves_points_by_the_padding(estimator, person):
    img, gt = person
    pad = 140
    wide = cv2.copyMakeBorder(img, 0, 0, pad, 61, cv2.BORDER_REPLICATE)  # landscape 255×400
    (a,) = estimator(img[None], track=False)
    (b,) = estimator(np.ascontiguousarray(wide)[None], track=False)
    assert b.num_people == 1 and b.width == 400
    shift = b.body[0, :, :2] - a.body[0, :, :2] - [pad, 0]
    assert np.abs(shift).max() < 0.03 * _diag(gt)


@needs_models
def test_tracking_reuses_the_roi_and_agrees(estimator, person, monkeypatch):
    img, gt = person
    frames = np.stack([img] * 3)
    calls = []
    original = estimator.body.detector.__call__
    monkeypatch.setattr(type(estimator.body.detector), "__call__",
                        lambda self, image: calls.append(1) or original(image))
    tracked = estimator(frames, track=True)
    assert len(calls) == 1  # the detector ran for the first frame only
    untracked = estimator(frames, track=False)
    assert len(calls) == 4
    for t, u in zip(tracked, untracked):
        assert t.num_people == u.num_people == 1
        assert np.abs(t.body[0, :, :2] - u.body[0, :, :2]).max() < 0.02 * _diag(gt)
        assert (t.left_hand[0, :, 2] > 0).all() and (t.face[0, :, 2] > 0).all()


@needs_models
def test_world_points_are_metres_around_the_hips_in_camera_axes(estimator, person):
    img, _ = person
    (frame,) = estimator(img[None], track=False)
    world = frame.world[0]
    assert world.shape == (18, 3)
    hips = (world[8] + world[11]) / 2
    assert np.linalg.norm(hips) < 0.05                                  # origin at the hip centre
    assert world[1, 1] < -0.3 and world[10, 1] > 0.5 and world[13, 1] > 0.5  # neck up, ankles down (y down)
    assert 0.2 < np.linalg.norm(world[2] - world[5]) < 0.6             # shoulder width in metres
    assert world[0, 2] < world[1, 2] + 0.05                            # a frontal person: the nose not behind the neck
    assert world[5, 0] > world[2, 0]                                   # facing the camera: left shoulder on the image right


@needs_models
def test_tracking_falls_back_to_the_detector(estimator, person):
    img, _ = person
    frames = np.stack([img, np.zeros_like(img), img])
    assert [f.num_people for f in estimator(frames, track=True)] == [1, 0, 1]


@needs_models
def test_progress_is_reported_and_can_cancel(estimator):
    seen = []
    estimator(np.zeros((3, 8, 8, 3), np.uint8), on_progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        estimator(np.zeros((3, 8, 8, 3), np.uint8), on_progress=cancel)


@needs_models
def test_parts_can_be_switched_off(person):
    img, _ = person
    est = BlazePoseEstimator(MODEL_DIR, hands=False, face=False, num_threads=1)
    assert est.hands is None and est.face is None
    (frame,) = est(img[None])
    assert frame.num_people == 1 and frame.body[0, :, 2].min() > 0.5
    assert not frame.left_hand.any() and not frame.right_hand.any() and not frame.face.any()


def test_detector_spec_counts_2254_anchors():
    anchors = ssd.anchor_centres(ssd.POSE_DETECTOR)
    assert anchors.shape == (2254, 2)
    assert anchors[0] == pytest.approx([0.5 / 28, 0.5 / 28])
    assert anchors[-1] == pytest.approx([6.5 / 7, 6.5 / 7])
