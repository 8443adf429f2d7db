"""Body models behind one interface: Anny (real, bundled data) and SMPL-X (a small synthetic file)."""
import math

import numpy as np
import pytest
import torch

from marionette.models.body.anny_model import pose_from_bone_rotations, sequence_from_actor
from marionette.models.body.joint_maps import ANNY_POSE_BONES, OPENPOSE18
from marionette.models.body.loading import load_body_model
from marionette.models.body.model import HINGE_PRIOR_WEIGHT, BodyOutput, axis_angle_to_matrix, to_camera
from marionette.models.body.types import SMPL_PARTS
from marionette.models.errors import MarionetteError
from smplx_fixture import SMALL_VERTEX_IDS, build, joint_positions, small_vertex_ids, write_fixture

J = {name: i for i, name in enumerate(OPENPOSE18)}
PART = {name: i for i, name in enumerate(SMPL_PARTS)}


@pytest.fixture(scope="module")
def smplx_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("smplx")
    write_fixture(root / "npz")
    write_fixture(root / "pkl", ext="pkl")
    write_fixture(root / "nested" / "smplx", gender="female")
    return root


@pytest.fixture(scope="module")
def smplx_body(smplx_dirs):
    with small_vertex_ids():
        return load_body_model("smplx", str(smplx_dirs / "npz"))


@pytest.fixture(scope="module")
def anny_body():
    return load_body_model("anny")


@pytest.fixture(params=["anny", "smplx"])
def body(request):
    return request.getfixturevalue(f"{request.param}_body")


def slot(body, name: str) -> slice:
    i = body.pose_names.index(name)
    return slice(3 * i, 3 * i + 3)


def posed(body, **rotations) -> torch.Tensor:
    """[1, P] pose with the named joints rotated (axis-angle, body-space axes)."""
    pose = body.zero_pose(1)
    for name, rotvec in rotations.items():
        pose[0, slot(body, name)] = torch.tensor(rotvec, dtype=torch.float32)
    return pose


ELBOW = {"anny": ("lowerarm01.L", "lowerarm01.R"), "smplx": ("left_elbow", "right_elbow")}
SHOULDER = {"anny": "upperarm01.L", "smplx": "left_shoulder"}
KNEE = {"anny": ("lowerleg01.L", "lowerleg01.R"), "smplx": ("left_knee", "right_knee")}


def random_pose(body, batch: int, scale: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, body.pose_dim, generator=g) * scale


# ------------------------------------------------------------------------------- both backends

def test_output_shapes_and_tables(body):
    out = body(random_pose(body, 3), body.default_betas())
    assert isinstance(out, BodyOutput)
    num_vertices = len(body.part_labels)
    assert out.vertices.shape == (3, num_vertices, 3) and out.vertices.dtype == torch.float32
    assert out.body18.shape == (3, 18, 3) and out.hands.shape == (3, 2, 21, 3)
    assert (out.face is None) if body.name == "anny" else (out.face.shape == (3, 68, 3))
    assert body.faces.dtype == np.int32 and body.faces.shape[1] == 3
    assert body.faces.min() >= 0 and body.faces.max() < num_vertices
    assert body.part_labels.dtype == np.int64 and body.part_labels.min() >= 0 and body.part_labels.max() <= 23
    assert body.pose_dim == 3 * len(body.pose_names) and body.pose_names[0] == "global_orient"
    assert body.zero_pose(4).shape == (4, body.pose_dim) and not body.zero_pose(1).any()
    assert body.default_betas().shape == (body.num_betas,)
    assert body.prior_weights.shape == (len(body.pose_names),) and body.prior_weights[0] == 0
    # per-pose betas give the same result as shared betas
    shared = body(body.zero_pose(2), body.default_betas())
    per_pose = body(body.zero_pose(2), body.default_betas().expand(2, -1))
    assert torch.allclose(shared.body18, per_pose.body18, atol=1e-6)


def test_gradients_reach_pose_betas_and_expression(body):
    pose = random_pose(body, 2, 0.2).requires_grad_()
    betas = (body.default_betas() + 0.05).requires_grad_()
    expression = torch.zeros(2, body.num_expression, requires_grad=True)
    out = body(pose, betas, expression if body.num_expression else None)
    loss = out.body18.pow(2).sum() + out.hands.pow(2).sum() + out.vertices.pow(2).mean()
    if out.face is not None:
        loss = loss + out.face.pow(2).sum()
    loss.backward()
    per_joint = pose.grad.reshape(2, -1, 3).abs().sum((0, 2))
    assert per_joint[0] == 0                         # global orientation: applied by to_camera, not forward
    assert (per_joint[1:] > 0).all()                 # every other joint moves some output point
    assert torch.isfinite(betas.grad).all() and (betas.grad.abs() > 0).all()
    if body.num_expression:
        assert expression.grad.abs().sum() > 0


def test_gradient_is_finite_at_the_zero_pose(body):
    pose = body.zero_pose(1).requires_grad_()
    body(pose, body.default_betas()).body18.sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0


def test_root_stays_at_the_origin(body):
    pose = random_pose(body, 4, 0.3, seed=1)
    betas = body.default_betas() + torch.linspace(-0.3, 0.3, body.num_betas)    # another body shape
    out = body(pose, betas)
    mid_hip = (out.body18[:, J["left_hip"]] + out.body18[:, J["right_hip"]]) / 2
    assert mid_hip.norm(dim=-1).max() < 0.12           # the root joint sits between the hips
    # rotating the upper body (not the legs) does not move the hips: the root is fixed
    upper = pose.clone()
    upper[:, slot(body, SHOULDER[body.name])] += 0.5
    moved = body(upper, betas)
    hips = [J["left_hip"], J["right_hip"]]
    assert torch.allclose(moved.body18[:, hips], out.body18[:, hips], atol=1e-5)


def test_zero_pose_stands_up_facing_plus_z_with_left_at_plus_x(body):
    out = body(body.zero_pose(1), body.default_betas())
    k = out.body18[0]
    y = lambda name: float(k[J[name], 1])  # noqa: E731
    assert y("nose") > y("neck") > y("left_hip") > y("left_knee") > y("left_ankle")
    assert y("neck") > y("right_hip") > y("right_knee") > y("right_ankle")
    for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle", "eye", "ear"):
        assert k[J[f"left_{part}"], 0] > k[J[f"right_{part}"], 0], part
    assert k[J["nose"], 2] > k[J["neck"], 2]                       # the face looks toward +z
    assert (out.hands[0, 0, :, 0] > 0.2).all() and (out.hands[0, 1, :, 0] < -0.2).all()
    assert torch.allclose(out.hands[0, :, 0], k[[J["left_wrist"], J["right_wrist"]]], atol=0.03)
    if out.face is not None:
        assert out.face[0, :, 1].min() > y("neck")


def test_part_labels_cover_the_body_and_sit_where_they_belong(body):
    labels = body.part_labels
    assert set(np.unique(labels)) == set(range(24))
    out = body(body.zero_pose(1), body.default_betas())
    verts, k = out.vertices[0].numpy(), out.body18[0].numpy()
    centre = {p: verts[labels == PART[p]].mean(0) for p in SMPL_PARTS}
    for part in SMPL_PARTS:
        if part.startswith("left_"):
            assert centre[part][0] > 0 > centre["right_" + part[5:]][0], part
    for side in ("left", "right"):
        wrist = k[J[f"{side}_wrist"]]
        for part in (f"{side}_wrist", f"{side}_hand"):
            dist = np.linalg.norm(verts[labels == PART[part]] - wrist, axis=1)
            assert dist.max() < 0.25, part
        ankle = np.linalg.norm(verts[labels == PART[f"{side}_ankle"]] - k[J[f"{side}_ankle"]], axis=1)
        assert ankle.max() < 0.25
    head = np.linalg.norm(verts[labels == PART["head"]] - k[J["nose"]], axis=1)
    assert np.median(head) < 0.15
    assert centre["head"][1] > centre["neck"][1] > centre["spine3"][1] > centre["pelvis"][1]


def test_shoulder_rotation_swings_the_arm_up(body):
    """+90° about z at the left shoulder carries everything below it rigidly toward +y (up)."""
    rest = body(body.zero_pose(1), body.default_betas())
    turn = (0.0, 0.0, math.pi / 2)
    up = body(posed(body, **{SHOULDER[body.name]: turn}), body.default_betas())
    rot = axis_angle_to_matrix(torch.tensor(turn))
    elbow = J["left_elbow"]
    forearm = lambda out: out.body18[0, J["left_wrist"]] - out.body18[0, elbow]  # noqa: E731
    assert torch.allclose(forearm(up), rot @ forearm(rest), atol=1e-4)
    hand = lambda out: out.hands[0, 0] - out.body18[0, elbow]  # noqa: E731
    assert torch.allclose(hand(up), hand(rest) @ rot.T, atol=1e-4)
    assert up.body18[0, elbow, 1] > rest.body18[0, elbow, 1] + 0.1
    assert up.hands[0, 0, :, 1].min() > rest.hands[0, 0, :, 1].max()
    assert torch.allclose(up.body18[0, J["right_wrist"]], rest.body18[0, J["right_wrist"]], atol=1e-5)


def test_to_camera_applies_global_orientation_and_translation(body):
    out = body(body.zero_pose(1), body.default_betas())
    pose = body.zero_pose(1)
    pose[0, :3] = torch.tensor([math.pi, 0.0, 0.0])     # a person facing an OpenCV camera
    cam = to_camera(out.body18, pose, torch.tensor([[0.0, 0.0, 3.0]]))[0]
    assert cam[J["nose"], 1] < cam[J["left_ankle"], 1]           # head at the top of the image (y down)
    assert cam[J["nose"], 2] < cam[J["neck"], 2] < 3.0 + 0.05    # the face is nearer the camera
    assert cam[J["left_shoulder"], 0] > cam[J["right_shoulder"], 0]   # the person's left on the image right


def test_pose_prior_penalises_backward_elbows_and_ignores_global_orientation(body):
    zero = body.pose_prior(body.zero_pose(2))
    assert zero.shape == (2,) and torch.allclose(zero, torch.zeros(2))
    turned = body.zero_pose(1)
    turned[0, :3] = torch.tensor([0.3, 2.0, -1.0])
    assert body.pose_prior(turned)[0] == 0
    hinge = next(h for h in body.hinges if h.slot == body.pose_names.index(ELBOW[body.name][0]))
    axis = torch.tensor(hinge.axis, dtype=torch.float32)
    angle = hinge.rest_flexion + 0.6                    # past straight backwards, and as far forwards
    forward = body.pose_prior(posed(body, **{ELBOW[body.name][0]: (axis * 0.6).tolist()}))
    backward = body.pose_prior(posed(body, **{ELBOW[body.name][0]: (-axis * angle).tolist()}))
    straight = body.pose_prior(posed(body, **{ELBOW[body.name][0]: (-axis * hinge.rest_flexion).tolist()}))
    assert forward[0] == pytest.approx(0.36, rel=1e-4)                     # plain L2
    assert straight[0] == pytest.approx(hinge.rest_flexion ** 2, rel=1e-3, abs=1e-6)
    assert backward[0] == pytest.approx(angle ** 2 + HINGE_PRIOR_WEIGHT * 0.36, rel=1e-3)
    assert sorted(h.slot for h in body.hinges) == sorted(body.pose_names.index(n)
                                                         for n in ELBOW[body.name] + KNEE[body.name])


def test_shape_prior_is_zero_at_the_average_body(body):
    assert float(body.shape_prior(body.default_betas())) == 0
    assert float(body.shape_prior(body.default_betas() + 0.1)) > 0
    assert body.shape_prior(body.default_betas().expand(3, -1)).dim() == 0


def test_bad_inputs_raise_clear_errors(body):
    with pytest.raises(MarionetteError, match="pose has shape"):
        body(torch.zeros(2, body.pose_dim + 3), body.default_betas())
    with pytest.raises(MarionetteError, match="betas have shape"):
        body(body.zero_pose(2), torch.zeros(3, body.num_betas))
    if body.name == "anny":
        with pytest.raises(MarionetteError, match="no facial expression"):
            body(body.zero_pose(1), body.default_betas(), torch.zeros(1, 10))
    else:
        with pytest.raises(MarionetteError, match="expression has shape"):
            body(body.zero_pose(1), body.default_betas(), torch.zeros(1, 4))


def test_axis_angle_to_matrix_matches_scipy_near_zero_and_half_turns():
    from scipy.spatial.transform import Rotation
    g = torch.Generator().manual_seed(5)
    directions = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=-1)
    rotvecs = torch.cat([torch.randn(6, 3, generator=g), directions * 1e-6, directions * (math.pi - 1e-4)])
    ours = axis_angle_to_matrix(rotvecs).double().numpy()
    assert np.allclose(ours, Rotation.from_rotvec(rotvecs.double().numpy()).as_matrix(), atol=1e-6)
    zero = torch.zeros(3, requires_grad=True)
    axis_angle_to_matrix(zero)[0, 1].backward()      # d R[0,1] / d r_z = -1 at the identity
    assert torch.allclose(zero.grad, torch.tensor([0.0, 0.0, -1.0]))


def test_load_body_model_rejects_unknown_kinds_and_genders():
    with pytest.raises(MarionetteError, match="Unknown body model 'smpl'"):
        load_body_model("smpl")
    with pytest.raises(MarionetteError, match="Unknown body gender"):
        load_body_model("anny", gender="other")


# ------------------------------------------------------------------------------------------- Anny

def test_anny_is_built_once_per_process(anny_body):
    again = load_body_model("Anny", gender="female")
    assert again.core is anny_body.core and load_body_model("anny") is anny_body
    assert anny_body.pose_names[1:] == ANNY_POSE_BONES and anny_body.pose_dim == 156
    assert anny_body.num_betas == 6 and anny_body.num_expression == 0


def test_anny_fast_skinning_equals_annys_forward(anny_body):
    core = anny_body.core
    assert core.fast_skinning
    g = torch.Generator().manual_seed(4)
    deltas = torch.eye(4).repeat(2, len(core.bone_labels), 1, 1)
    deltas[:, core.pose_bone_ids, :3, :3] = axis_angle_to_matrix(torch.randn(2, len(ANNY_POSE_BONES), 3, generator=g))
    phenotype = torch.rand(2, 6, generator=g)
    with torch.no_grad():
        vertices, bone_poses = core.pose(deltas, phenotype)
        reference = core.module(pose_parameters=deltas, phenotype_kwargs=phenotype)
    assert torch.allclose(vertices, reference["vertices"], atol=1e-5)
    assert torch.allclose(bone_poses, reference["bone_poses"], atol=1e-5)


def test_anny_matches_the_synthetic_ground_truth(anny_body):
    """Same phenotype and bone rotations as models.synthetic → the same joints in its camera."""
    from marionette.models.synthetic.actor import DRIVER, REFERENCE, pose_actor, procedural_motion
    from marionette.models.synthetic.clip import OPENPOSE_FROM_COCO, coco_to_openpose
    from marionette.models.synthetic.scene import fit_camera
    assert OPENPOSE_FROM_COCO == OPENPOSE18
    cases = ((DRIVER, procedural_motion("walk+wave+turn", 4, 12.0, seed=2)),
             (REFERENCE, procedural_motion("squat+arms", 2, 3.0, seed=1) + procedural_motion("still", 1, 1.0)))
    for phenotype, poses in cases:
        actor = pose_actor(phenotype, poses)
        camera = fit_camera(actor.vertices, 384, 512)
        truth = coco_to_openpose(camera.project(actor.keypoints)[0], actor.labels)
        seq = sequence_from_actor(phenotype, poses, camera)
        pose, translation = torch.as_tensor(seq.pose), torch.as_tensor(seq.translation)
        with torch.no_grad():
            out = anny_body(pose, torch.as_tensor(seq.betas))
            ours = seq.camera.project(to_camera(out.body18, pose, translation).numpy())
            verts = to_camera(out.vertices, pose, translation).numpy()
        err = np.linalg.norm(ours - truth, axis=-1)
        assert err[:, [i for i in range(18) if i != J["neck"]]].max() < 0.01
        assert err[:, J["neck"]].max() < 1.5          # 3D shoulder mean vs the clip's 2D mean
        vertex_xy, depth = camera.project(actor.vertices)
        assert np.abs(seq.camera.project(verts) - vertex_xy).max() < 0.01
        assert np.abs(verts[..., 2] - depth).max() < 1e-4


def test_anny_bone_rotations_convert_and_unknown_bones_are_refused():
    quarter = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)     # +90° about anny's X (= body x)
    pose = pose_from_bone_rotations({"lowerleg01.L": quarter})
    i = 1 + ANNY_POSE_BONES.index("lowerleg01.L")
    assert np.allclose(pose[3 * i:3 * i + 3], [math.pi / 2, 0, 0], atol=1e-6)
    assert np.count_nonzero(pose) == 1
    with pytest.raises(MarionetteError, match="toe1-1.L"):
        pose_from_bone_rotations({"toe1-1.L": np.eye(3)})


def test_anny_knee_bends_backwards_and_fingers_curl(anny_body):
    betas = anny_body.default_betas()
    rest = anny_body(anny_body.zero_pose(1), betas)
    bent = anny_body(posed(anny_body, **{"lowerleg01.L": (1.2, 0.0, 0.0)}), betas)
    assert bent.body18[0, J["left_ankle"], 2] < rest.body18[0, J["left_ankle"], 2] - 0.2   # shin goes back
    assert torch.allclose(bent.body18[0, J["right_ankle"]], rest.body18[0, J["right_ankle"]], atol=1e-5)
    curl = {f"finger2-{k}.L": (-0.6, 0.0, 0.0) for k in (1, 2, 3)}
    curled = anny_body(posed(anny_body, **curl), betas)
    moved = (curled.hands[0, 0] - rest.hands[0, 0]).norm(dim=-1)
    assert moved[6:9].min() > 0.005 and moved[8] > 0.02               # index PIP, DIP and tip move
    assert moved[[0, 1, 2, 3, 4, 5, 9, 13, 17]].max() < 1e-5           # wrist, thumb, knuckles stay
    assert torch.allclose(curled.body18, rest.body18, atol=1e-5)


def test_anny_phenotype_changes_the_body(anny_body):
    tall = anny_body.default_betas().clone()
    tall[4] = 1.0
    rest, taller = (anny_body(anny_body.zero_pose(1), b) for b in (anny_body.default_betas(), tall))
    height = lambda o: float(o.vertices[0, :, 1].max() - o.vertices[0, :, 1].min())  # noqa: E731
    assert height(taller) > height(rest) + 0.05
    assert float(anny_body.shape_prior(tall)) == pytest.approx(0.25)
    assert float(anny_body.shape_prior(torch.full((6,), 1.2))) == pytest.approx(6 * 0.49 + 100 * 6 * 0.04, rel=1e-5)


# ------------------------------------------------------------------------------------------ SMPL-X

def test_smplx_loads_npz_and_pkl_alike(smplx_dirs, smplx_body):
    with small_vertex_ids():
        from_pkl = load_body_model("smplx", str(smplx_dirs / "pkl"))
        female = load_body_model("smplx", str(smplx_dirs / "nested"), "female")   # the smplx/ subfolder
    assert from_pkl is not smplx_body and female.path.name == "SMPLX_FEMALE.npz"
    pose = random_pose(smplx_body, 2, 0.3, seed=3)
    a, b = smplx_body(pose, smplx_body.default_betas()), from_pkl(pose, from_pkl.default_betas())
    assert torch.allclose(a.vertices, b.vertices, atol=1e-6) and torch.allclose(a.face, b.face, atol=1e-6)
    assert smplx_body.pose_dim == 165 and smplx_body.num_betas == 10 and smplx_body.num_expression == 10
    assert load_body_model("SMPL-X", str(smplx_dirs / "npz")) is smplx_body


def test_smplx_missing_file_names_file_folder_site_and_licence(tmp_path):
    with pytest.raises(MarionetteError) as err:
        load_body_model("smplx", str(tmp_path), "male")
    text = str(err.value)
    for needle in ("SMPLX_MALE.npz", str(tmp_path), "ComfyUI/models/smplx", "smpl-x.is.tue.mpg.de", "licence"):
        assert needle in text
    with pytest.raises(MarionetteError, match="No SMPL-X model folder"):
        load_body_model("smplx", None)


def test_smplx_unreadable_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "SMPLX_NEUTRAL.npz").write_bytes(b"not a model")
    with pytest.raises(MarionetteError, match="could not be read as an SMPL-X model"):
        load_body_model("smplx", str(tmp_path / "bad"))
    write_fixture(tmp_path / "small")                  # smplx's real keypoint vertex ids: too few vertices
    with pytest.raises(MarionetteError, match="not an SMPL-X model file"):
        load_body_model("smplx", str(tmp_path / "small"))


def test_smplx_file_without_jaw_line_landmarks_gives_no_face(tmp_path):
    data = build()
    del data["dynamic_lmk_faces_idx"], data["dynamic_lmk_bary_coords"]
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", **data)
    with small_vertex_ids():
        body = load_body_model("smplx", str(tmp_path))
    out = body(body.zero_pose(3), body.default_betas())
    assert not body.has_contour and out.face is None and out.body18.shape == (3, 18, 3)


def test_smplx_joint_maps_follow_the_skeleton(smplx_body):
    out = smplx_body(smplx_body.zero_pose(1), smplx_body.default_betas())
    rest = torch.tensor(joint_positions() - joint_positions()[0], dtype=torch.float32)
    from smplx.joint_names import JOINT_NAMES
    for name in OPENPOSE18:
        if name in ("nose", "neck") or name.endswith(("eye", "ear")):
            continue
        assert torch.allclose(out.body18[0, J[name]], rest[JOINT_NAMES.index(name)], atol=1e-5), name
    assert torch.allclose(out.body18[0, J["neck"]], (rest[16] + rest[17]) / 2, atol=1e-5)
    verts = out.vertices[0]
    assert torch.allclose(out.body18[0, J["nose"]], verts[SMALL_VERTEX_IDS["nose"]], atol=1e-6)
    assert torch.allclose(out.body18[0, J["left_ear"]], verts[SMALL_VERTEX_IDS["lear"]], atol=1e-6)
    left = out.hands[0, 0]
    assert torch.allclose(left[0], rest[20], atol=1e-5)                                  # wrist
    assert torch.allclose(left[1:4], rest[37:40], atol=1e-5)                             # thumb 1-3
    assert torch.allclose(left[4], verts[SMALL_VERTEX_IDS["lthumb"]], atol=1e-6)         # thumb tip
    assert torch.allclose(left[5:8], rest[25:28], atol=1e-5)                             # index 1-3
    assert torch.allclose(left[17:20], rest[31:34], atol=1e-5)                           # pinky 1-3
    assert torch.allclose(out.hands[0, 1, 20], verts[SMALL_VERTEX_IDS["rpinky"]], atol=1e-6)


def test_smplx_part_labels_follow_the_skinning_joints(smplx_body):
    owner = np.repeat(np.arange(55), 6)                 # the fixture skins each octahedron to one joint
    expected = np.where(owner < 22, owner, np.where(owner < 25, 15, np.where(owner < 40, 22, 23)))
    assert np.array_equal(smplx_body.part_labels, expected)


def test_smplx_face_landmarks_follow_expression(smplx_body):
    pose = smplx_body.zero_pose(1)
    smile = torch.zeros(1, 10)
    smile[0, 0] = 2.0
    a = smplx_body(pose, smplx_body.default_betas())
    b = smplx_body(pose, smplx_body.default_betas(), smile)
    assert (b.face - a.face).abs().max() > 1e-3
    assert torch.allclose(a.body18[:, [J["left_wrist"]]], b.body18[:, [J["left_wrist"]]], atol=1e-6)

