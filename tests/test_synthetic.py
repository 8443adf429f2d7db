"""Synthetic people (anny + pyrender): rendered frames, ground-truth joints, and the PCK metric."""
import numpy as np
import pytest

from marionette.models.errors import MarionetteError
from marionette.models.pose.types import BODY, PoseFrame, empty_frame

R_SHOULDER, L_SHOULDER, R_WRIST, L_WRIST, R_HIP, L_HIP, R_ANKLE, L_ANKLE = 2, 5, 4, 7, 8, 11, 10, 13
R_EAR, L_EAR = 16, 17


@pytest.fixture(scope="module")
def clip():
    from marionette.models.synthetic import render_driving_clip
    return render_driving_clip(frames=16, width=384, height=384, seed=0)


@pytest.fixture(scope="module")
def reference():
    from marionette.models.synthetic import render_reference
    return render_reference(width=384, height=576, seed=1)


def test_import_is_cheap_and_lazy():
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    code = ("import sys, types; pkg = types.ModuleType('marionette'); pkg.__path__ = [sys.argv[1]]; "
            "sys.modules['marionette'] = pkg; import marionette.models.synthetic; "
            "print(sorted(m for m in ('torch', 'anny', 'pyrender', 'OpenGL', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ------------------------------------------------------------------------------------- rendering

def test_shapes_and_dtypes(clip, reference):
    assert clip.frames.shape == (16, 384, 384, 3) and clip.frames.dtype == np.uint8
    assert clip.joints2d.shape == (16, BODY, 3) and clip.joints2d.dtype == np.float32
    assert clip.masks.shape == (16, 384, 384) and clip.masks.dtype == bool
    assert clip.fps == 12.0 and clip.num_frames == 16 and clip.size == (384, 384)
    assert reference.frames.shape == (1, 576, 384, 3) and reference.joints2d.shape == (1, BODY, 3)
    assert set(np.unique(clip.joints2d[..., 2])) <= {0.0, 1.0}


def test_portrait_size_and_frame_count():
    from marionette.models.synthetic import render_driving_clip
    c = render_driving_clip(frames=2, width=288, height=512, motion="arms")
    assert c.frames.shape == (2, 512, 288, 3)
    vis = c.joints2d[..., 2] > 0
    assert (c.joints2d[..., 0][vis] < 288).all() and (c.joints2d[..., 1][vis] < 512).all()


def test_same_seed_same_pixels_other_seed_other_clip():
    from marionette.models.synthetic import render_driving_clip
    a = render_driving_clip(frames=3, width=192, height=192, seed=5)
    b = render_driving_clip(frames=3, width=192, height=192, seed=5)
    c = render_driving_clip(frames=3, width=192, height=192, seed=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.joints2d, b.joints2d)
    assert not np.array_equal(a.frames, c.frames)


def test_background_is_a_room_not_empty(clip):
    background = clip.frames[0][~clip.masks[0]]
    assert background.std() > 8.0                      # wall, floor, pictures: not a flat colour
    assert (background.max(axis=1) > 30).mean() > 0.95  # and not black
    person = clip.masks.mean(axis=(1, 2))
    assert ((person > 0.04) & (person < 0.6)).all()


def test_visible_joints_are_in_frame_and_on_the_silhouette(clip, reference):
    import cv2
    for c in (clip, reference):
        h, w = c.masks.shape[1:]
        vis = c.joints2d[..., 2] > 0
        assert vis[:, :14].mean() > 0.9
        xy = c.joints2d[..., :2][vis]
        assert (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()
        hits, shifted = [], []
        for t in range(c.num_frames):
            mask = cv2.dilate(c.masks[t].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            for x, y in c.joints2d[t, vis[t], :2]:
                hits.append(mask[int(y), int(x)])
                shifted.append(mask[int(y), int((x + w // 4) % w)])   # control: a wrong GT misses
        assert np.mean(hits) > 0.95, np.mean(hits)
        assert np.mean(shifted) < 0.6


def test_joint_layout_is_openpose_with_the_persons_left_on_image_right(reference):
    j = reference.joints2d[0]
    assert j[L_SHOULDER, 0] > j[R_SHOULDER, 0] and j[L_HIP, 0] > j[R_HIP, 0] and j[L_ANKLE, 0] > j[R_ANKLE, 0]
    assert j[0, 1] < j[1, 1] < j[R_HIP, 1] < j[9, 1] < j[R_ANKLE, 1]     # nose, neck, hip, knee, ankle
    assert np.allclose(j[1, :2], (j[R_SHOULDER, :2] + j[L_SHOULDER, :2]) / 2)
    assert (reference.joints2d[0, :, 2] == 1).all()                     # facing the camera: all visible


def test_motion_moves_the_joints(clip):
    vis = (clip.joints2d[..., 2] > 0).all(axis=0)
    spread = clip.joints2d[:, vis, :2].std(axis=0).max(axis=1)            # px, per joint
    assert spread.max() > 0.05 * 384
    steps = np.linalg.norm(np.diff(clip.joints2d[:, :, :2], axis=0), axis=2).mean(axis=1)
    assert (steps > 0.5).all(), steps                                     # every frame differs
    wrist = clip.joints2d[:, R_WRIST, :2]
    assert np.ptp(wrist[:, 0]) > 0.04 * 384                               # the waving hand sways


def test_turning_hides_an_ear_and_the_metadata_follows():
    from marionette.models.synthetic import render_driving_clip
    c = render_driving_clip(frames=6, width=256, height=256, fps=4.0, motion="turn", seed=3)
    ears = c.joints2d[:, [R_EAR, L_EAR], 2]
    assert ears.min() == 0 and ears.max() == 1
    assert c.motion == "turn" and c.fps == 4.0


def test_reference_has_a_different_body(reference):
    from marionette.models.synthetic import DRIVER, REFERENCE, render_reference
    from marionette.models.synthetic.clip import render_actor
    from marionette.models.synthetic.actor import procedural_motion
    assert reference.phenotype == REFERENCE != DRIVER
    driver = render_reference(width=384, height=576, phenotype=DRIVER, seed=1)

    def proportions(c):
        """Silhouette fullness (area / height²), hip width / height, leg length / height."""
        j, height = c.joints2d[0], np.ptp(np.nonzero(c.masks[0])[0])
        return np.array([c.masks[0].sum() / height ** 2, abs(j[L_HIP, 0] - j[R_HIP, 0]) / height,
                         (j[R_ANKLE, 1] - j[R_HIP, 1]) / height])

    ratio = proportions(reference) / proportions(driver)
    assert ratio[0] > 1.1 and ratio[1] > 1.15 and ratio[2] < 0.95, ratio   # heavier, wider hips, shorter legs
    # Seen by the same camera, the short reference person is clearly shorter in pixels.
    same_cam = render_actor(REFERENCE, procedural_motion("still", 1, 1.0), 384, 576, 1.0, "still",
                            reference.appearance, 1, 0.8, camera=driver.camera)
    h_ref = np.ptp(np.nonzero(same_cam.masks[0])[0])
    h_drv = np.ptp(np.nonzero(driver.masks[0])[0])
    assert h_ref < 0.92 * h_drv, (h_ref, h_drv)


def test_pose_frames_carry_the_visible_ground_truth(clip):
    frames = clip.pose_frames()
    assert len(frames) == clip.num_frames and all(isinstance(f, PoseFrame) for f in frames)
    vis = clip.joints2d[3, :, 2] > 0
    assert np.allclose(frames[3].body[0, vis, :2], clip.joints2d[3, vis, :2])
    assert (frames[3].body[0, ~vis] == 0).all() and frames[3].width == 384


def test_bad_inputs_fail_clearly():
    from marionette.models.synthetic import Phenotype, render_driving_clip
    with pytest.raises(MarionetteError, match="motion"):
        render_driving_clip(frames=2, motion="moonwalk")
    with pytest.raises(MarionetteError, match="Phenotype"):
        Phenotype(height=1.5)
    with pytest.raises(MarionetteError, match="size"):
        render_driving_clip(frames=2, width=8, height=8)
    with pytest.raises(MarionetteError, match="frames"):
        render_driving_clip(frames=0)


# ---------------------------------------------------------------------------------------- metric

def _gt(points, vis=None):
    """[1, 18, 3] ground truth with the given (x, y) for the first joints, others invisible."""
    g = np.zeros((1, BODY, 3))
    for i, (x, y) in enumerate(points):
        g[0, i] = (x, y, 1.0 if vis is None else vis[i])
    return g


def test_pck_hand_computed_bbox_case():
    from marionette.models.synthetic.metrics import pck, pck_per_joint
    gt = _gt([(0, 0), (30, 40)])                 # bbox diagonal 50 -> threshold 5 at alpha 0.1
    pred = gt.copy()
    pred[0, 0, :2] += (3, 4)                     # 5 px: exactly on the threshold, counts
    pred[0, 1, :2] += (0, 6)                     # 6 px: misses
    assert pck(pred, gt, alpha=0.1) == 0.5
    assert pck(pred, gt, alpha=0.2) == 1.0
    per = pck_per_joint(pred, gt, alpha=0.1, joints=(0, 1, 2))
    assert per[0] == 1.0 and per[1] == 0.0 and np.isnan(per[2])


def test_pck_ignores_invisible_gt_and_counts_missing_predictions():
    from marionette.models.synthetic.metrics import pck
    gt = _gt([(0, 0), (30, 40), (100, 100)], vis=[1, 1, 0])   # joint 2 invisible: not counted, not in bbox
    pred = gt.copy()
    pred[0, 2, :2] = (900, 900)
    assert pck(pred, gt) == 1.0
    pred[0, 1, 2] = 0.0                          # a missing prediction is a miss even at the right place
    assert pck(pred, gt) == 0.5


def test_pck_torso_reference_and_explicit_lengths():
    from marionette.models.synthetic.metrics import pck
    gt = np.zeros((1, BODY, 3))
    for j, xy in ((R_SHOULDER, (0, 0)), (L_SHOULDER, (20, 0)), (R_HIP, (0, 30)), (L_HIP, (20, 30))):
        gt[0, j] = (*xy, 1)
    pred = gt.copy()
    pred[0, R_SHOULDER, 0] += 4                  # torso 30 -> threshold 3: a miss; bbox 36 -> 3.6: miss
    pred[0, L_SHOULDER, 0] += 2.5                # hit for both
    joints = (R_SHOULDER, L_SHOULDER, R_HIP, L_HIP)
    assert pck(pred, gt, ref="torso", joints=joints) == 0.75
    assert pck(pred, gt, ref=np.array([100.0]), joints=joints) == 1.0
    with pytest.raises(MarionetteError):
        pck(pred, gt, ref="elbow")


def test_pck_takes_pose_frames_picks_the_matching_person_and_handles_empty_frames():
    from marionette.models.synthetic.metrics import pck
    gt = np.concatenate([_gt([(10, 10), (40, 50)]), _gt([(10, 10), (40, 50)])])
    right = np.zeros((BODY, 3), np.float32)
    right[:2] = ((10, 10, 0.9), (40, 50, 0.9))
    wrong = right.copy()
    wrong[:2, :2] += 200
    z = lambda p, n: np.zeros((p, n, 3))  # noqa: E731
    two_people = PoseFrame(64, 64, np.stack([wrong, right]), z(2, 21), z(2, 21), z(2, 68))
    assert pck([two_people, empty_frame(64, 64)], gt, joints=(0, 1)) == 0.5
    with pytest.raises(MarionetteError, match="frames"):
        pck([two_people], gt)


def test_pck_of_the_ground_truth_against_itself(clip):
    from marionette.models.synthetic.metrics import pck
    assert pck(clip.pose_frames(), clip) == 1.0
    swapped = clip.joints2d[:, [0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16]]
    assert pck(swapped, clip, alpha=0.05) < 0.6    # left/right confusions are caught


def test_bowing_and_bending_move_the_head_on_straight_legs():
    """The training set's bow and bend: the head leaves its standing place (down and towards the camera, or
    sideways) while the knees stay straight and the feet stay put: shoulders move without squatting."""
    from marionette.models.synthetic.actor import DRIVER, pose_actor, procedural_motion
    standing = pose_actor(DRIVER, procedural_motion("still", 1, 12.0, 0))
    labels = list(standing.labels)
    nose, hip, ankle = (labels.index(n) for n in ("nose", "left_hip", "left_ankle"))
    head = standing.keypoints[0, nose]
    for motion, axis, sign in (("bow", 2, -1), ("bow", 1, -1), ("bend", 0, -1), ("bend", 0, 1)):
        kps = pose_actor(DRIVER, procedural_motion(motion, 24, 12.0, 0)).keypoints
        height = head[2]
        assert (sign * (kps[:, nose, axis] - head[axis])).max() > 0.15 * height, (motion, axis, sign)
        leg = np.linalg.norm(kps[:, hip] - kps[:, ankle], axis=1)
        assert np.ptp(leg) < 0.01 * height, motion                        # knees straight
        assert np.abs(kps[:, ankle] - standing.keypoints[0, ankle]).max() < 0.01 * height, motion


def test_kneeling_lowers_the_body_most_of_the_way_a_squat_does_on_asymmetric_legs():
    """The training set's kneel: the head comes down most of the way it does in the held-out squat (which
    also leans forward), one knee forward and one on the floor (a squat keeps both knees level)."""
    from marionette.models.synthetic.actor import DRIVER, pose_actor, procedural_motion
    drops, knees = {}, {}
    for motion in ("squat", "kneel"):
        posed = pose_actor(DRIVER, procedural_motion(motion, 24, 12.0, 0))
        labels = list(posed.labels)
        kps = posed.keypoints
        nose, lk, rk = (labels.index(n) for n in ("nose", "left_knee", "right_knee"))
        drops[motion] = kps[0, nose, 2] - kps[:, nose, 2].min()
        low = kps[:, nose, 2].argmin()
        knees[motion] = kps[low, [lk, rk], 2]
        assert posed.vertices[..., 2].min() == 0.0
    assert drops["kneel"] > 0.6 * drops["squat"] > 0.3
    assert abs(knees["squat"][0] - knees["squat"][1]) < 0.05
    assert knees["kneel"][0] - knees["kneel"][1] > 0.25 and knees["kneel"][1] < 0.15   # left up, right down


def test_a_lunge_lowers_the_body_on_split_legs_with_the_back_knee_off_the_floor():
    """The training set's lunge: the left foot forward, the right back, the head lower than standing but less
    than in a kneel, whose back knee rests on the floor where the lunge's stays above it."""
    from marionette.models.synthetic.actor import DRIVER, pose_actor, procedural_motion
    drops, low_knees = {}, {}
    for motion in ("kneel", "lunge"):
        posed = pose_actor(DRIVER, procedural_motion(motion, 24, 12.0, 0))
        labels = list(posed.labels)
        kps = posed.keypoints
        nose, lk, rk, la, ra = (labels.index(n) for n in ("nose", "left_knee", "right_knee", "left_ankle",
                                                           "right_ankle"))
        drops[motion] = kps[0, nose, 2] - kps[:, nose, 2].min()
        low = kps[:, nose, 2].argmin()
        low_knees[motion] = kps[low, rk, 2]
        assert kps[low, lk, 2] - kps[low, rk, 2] > 0.25                    # front knee up, back knee down
        assert kps[low, ra, 1] - kps[low, la, 1] > 0.8                      # feet split along the view axis
    assert 0.3 < drops["lunge"] < drops["kneel"]
    assert low_knees["lunge"] > 0.2 and low_knees["kneel"] < 0.1


def test_reaching_brings_both_wrists_forward_to_shoulder_height():
    from marionette.models.synthetic.actor import DRIVER, pose_actor, procedural_motion
    posed = pose_actor(DRIVER, procedural_motion("reach", 24, 12.0, 0))
    labels = list(posed.labels)
    kps = posed.keypoints
    for side in ("left", "right"):
        wrist, shoulder = labels.index(f"{side}_wrist"), labels.index(f"{side}_shoulder")
        rise = kps[:, wrist, 2] - kps[:, shoulder, 2]
        top = rise.argmax()
        assert abs(rise[top]) < 0.1 and rise[0] < -0.4                     # from hanging to shoulder height
        assert kps[0, wrist, 1] - kps[top, wrist, 1] > 0.3                   # and forward (-y faces the camera)
    assert np.ptp(kps[:, labels.index("nose")], axis=0).max() < 0.01       # the body stays where it is


def test_a_seed_still_gives_the_motion_it_gave_before_the_later_motions():
    """The cached training clips were rendered before bow, bend, kneel, lunge and reach existed: a seed's earlier
    motions must not change (values printed by the code before bow and bend for walk+wave+turn, seed 7)."""
    from marionette.models.synthetic.actor import procedural_motion
    poses = procedural_motion("walk+wave+turn", 5, 12.0, seed=7)
    got = [poses[4]["upperarm01.R"][0, 1], poses[3]["root"][0, 1], poses[2]["spine03"][1, 0]]
    np.testing.assert_allclose(got, [-0.45700791979190214, 0.37625496133036906, 0.1018014793707657], rtol=1e-12)
