"""Anny (PyPI `anny`, free, data bundled) behind the BodyModel interface.

Anny's world: metres, Z up, the person faces -Y, +X is the person's left, root bone at the origin.
Body space (types.py): x = left, y up, faces +z, so `body = ANNY_TO_BODY · anny` (a proper rotation).
Rotations convert the same way: a body-space rotation R is anny's `ANNY_TO_BODY.T · R · ANNY_TO_BODY`.

Pose layout (`pose_dim` = 3 + 3 x 51 = 156): global orientation, then one axis-angle rotation per bone
of `joint_maps.ANNY_POSE_BONES` (21 body bones, then 15 finger bones per hand), each a rotation about
the bone's head in body-space axes as at rest, applied after the parent's (anny's 'local-ref').
Shape (`betas`, 6 values in [0, 1]): anny's phenotype in `PHENOTYPE_ORDER` = gender (0 male, 1 female),
age (0 baby, 1/3 child, 2/3 young adult, 1 old), muscle, weight, height, proportions; differentiable.
body18 comes from anny's COCO keypoint regressor (neck = shoulder mean); hands from the COCO wrist,
finger bone heads and a fingertip vertex per finger; no face points (anny has no face landmarks).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from ..errors import MarionetteError
from .anny_data import build_anny_data
from .anny_data_worker import ANNY_KWARGS
from .joint_maps import (ANNY_BODY_BONES, ANNY_FINGER_OF, ANNY_POSE_BONES, FINGERS, OPENPOSE18, SHOULDERS,
                         anny_part_of_bone)
from .model import FINGER_PRIOR_WEIGHT, BodyModel, BodyOutput, axis_angle_to_matrix, hinge_from_rest
from .types import BodySequence, Camera

ANNY_TO_BODY = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
PHENOTYPE_ORDER = ("gender", "age", "muscle", "weight", "height", "proportions")
DEFAULT_PHENOTYPE = 0.5          # anny's own default for every phenotype value
SHAPE_RANGE_WEIGHT = 100.0       # anny clamps phenotypes to [0, 1]: keep the fit inside
COCO_ROWS = tuple(name for name in OPENPOSE18 if name != "neck")


class _AnnyCore:
    """The process-wide float32 anny model and the index tables derived from its rest pose."""

    def __init__(self):
        try:
            import anny
        except ImportError as e:
            raise MarionetteError(f"The anny body model cannot be imported ({e}).",
                                  "pip install anny (see .ci/lock.txt for the tested version).") from e
        # A first use builds anny's data in a child process (atomic, one builder at a time); then it loads.
        build_anny_data()
        # Pure-torch skinning (no NVIDIA Warp probing), float32 for speed: ~2x faster than anny's float64.
        self.module = anny.Anny(**ANNY_KWARGS).to(torch.float32)
        if tuple(self.module.phenotype_labels) != PHENOTYPE_ORDER:
            raise MarionetteError(f"This anny version orders its phenotype as {self.module.phenotype_labels}.",
                                  "Install the anny version from .ci/lock.txt.")
        labels = list(self.module.bone_labels)
        self.bone_labels = tuple(labels)
        self.pose_bone_ids = torch.tensor([labels.index(b) for b in ANNY_POSE_BONES])
        regressor = anny.KeypointsRegressor.coco(self.module)
        coco = list(regressor.labels)
        self.coco_weights = regressor.regression_weights[[coco.index(n) for n in COCO_ROWS]].clone()
        self.to_body = torch.tensor(ANNY_TO_BODY, dtype=torch.float32)
        self.faces = np.ascontiguousarray(self.module.faces.cpu().numpy().astype(np.int32))
        weights = self.module.vertex_bone_weights.cpu().numpy()
        indices = self.module.vertex_bone_indices.cpu().numpy()
        dominant = indices[np.arange(len(indices)), weights.argmax(1)]
        self.part_labels = np.array([anny_part_of_bone(b) for b in labels], np.int64)[dominant]
        with torch.no_grad():
            rest = self.module(pose_parameters=None)
        self.rest_vertices = rest["vertices"][0].cpu().numpy()
        self.rest_heads = rest["bone_poses"][0, :, :3, 3].cpu().numpy()
        self.tip_vertices = torch.tensor([self._fingertip(f"finger{ANNY_FINGER_OF[f]}", side, dominant)
                                          for side in ("L", "R") for f in FINGERS])
        self.hand_index = torch.tensor(self._hand_index())
        self.device = torch.device("cpu")
        # The faster path calls anny's building blocks; tests check it against anny's own forward.
        self.fast_skinning = all(hasattr(self.module, name) for name in (
            "get_tensor_inputs", "_get_phenotype_blendshape_coefficients", "get_rest_model", "get_bone_transforms",
            "dense_vertex_bone_weights"))

    def to(self, device) -> None:
        device = torch.device(device)
        self.module.to(device)
        for name in ("pose_bone_ids", "coco_weights", "to_body", "tip_vertices", "hand_index"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = device

    def pose(self, deltas: torch.Tensor, phenotype: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """anny's forward (vertices [B, V, 3], bone poses [B, N, 4, 4]) with a faster skinning step:
        anny's dense blend reduces a [B, V, 3, 3] product with a strided sum, which costs as much as the
        rest of the forward; here the three columns are added directly (same result, ~2x faster)."""
        m = self.module
        if not self.fast_skinning:
            out = m(pose_parameters=deltas, phenotype_kwargs=phenotype)
            return out["vertices"], out["bone_poses"]
        deltas, phenotype, local, facial = m.get_tensor_inputs(deltas, phenotype, None, None)
        rest = m.get_rest_model(m._get_phenotype_blendshape_coefficients(phenotype, local, facial))
        transforms, bone_poses = m.get_bone_transforms(deltas, rest["rest_bone_poses"])
        blend = torch.einsum("nj,bjik->bnik", m.dense_vertex_bone_weights, transforms[..., :3, :])
        v = rest["rest_vertices"]
        vertices = blend[..., 0] * v[..., :1] + blend[..., 1] * v[..., 1:2] + blend[..., 2] * v[..., 2:] + blend[..., 3]
        return vertices, bone_poses

    def _fingertip(self, finger: str, side: str, dominant: np.ndarray) -> int:
        """The vertex of the finger's last bone that lies furthest along that bone (the tip)."""
        last, middle = (self.bone_labels.index(f"{finger}-{k}.{side}") for k in (3, 2))
        ids = np.flatnonzero(dominant == last)
        direction = self.rest_heads[last] - self.rest_heads[middle]
        return int(ids[np.argmax((self.rest_vertices[ids] - self.rest_heads[last]) @ direction)])

    def _hand_index(self) -> np.ndarray:
        """[2, 21] rows into the stacked points [COCO rows, bone heads, fingertips] per OpenPose hand point."""
        n_coco, n_bones = len(COCO_ROWS), len(self.bone_labels)
        table = np.zeros((2, 21), np.int64)
        for h, (side, name) in enumerate((("L", "left"), ("R", "right"))):
            table[h, 0] = COCO_ROWS.index(f"{name}_wrist")
            for f, finger in enumerate(FINGERS):
                bone = f"finger{ANNY_FINGER_OF[finger]}"
                for k in (1, 2, 3):
                    table[h, 1 + 4 * f + k - 1] = n_coco + self.bone_labels.index(f"{bone}-{k}.{side}")
                table[h, 4 + 4 * f] = n_coco + n_bones + 5 * h + f
        return table

    def hinges(self):
        """Elbows and knees: flexion axes and rest flexion in body space."""
        heads = {b: self.rest_heads[self.bone_labels.index(b)] @ ANNY_TO_BODY.T for b in self.bone_labels}
        out = []
        for side in ("L", "R"):
            for parent, joint, child, bend in (("upperarm01", "lowerarm01", "wrist", (0, 0, 1.0)),
                                               ("upperleg01", "lowerleg01", "foot", (0, 0, -1.0))):
                slot = 1 + ANNY_POSE_BONES.index(f"{joint}.{side}")
                out.append(hinge_from_rest(slot, heads[f"{parent}.{side}"], heads[f"{joint}.{side}"],
                                           heads[f"{child}.{side}"], np.array(bend)))
        return tuple(out)


_CORE: list[_AnnyCore] = []
_CORE_LOCK = threading.Lock()


def anny_core() -> _AnnyCore:
    """The one anny model of this process (seconds once anny's data is built; see anny_data.py)."""
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(_AnnyCore())
        return _CORE[0]


class AnnyBody(BodyModel):
    """Anny posed through the shared interface (see the module doc for the layouts)."""

    name = "anny"
    num_betas = len(PHENOTYPE_ORDER)
    num_expression = 0
    pose_dim = 3 + 3 * len(ANNY_POSE_BONES)
    pose_names = ("global_orient",) + ANNY_POSE_BONES

    def __init__(self, gender: str = "neutral"):
        self.gender = gender
        self.core = anny_core()
        self.faces = self.core.faces
        self.part_labels = self.core.part_labels
        self.hinges = self.core.hinges()
        weights = [0.0] + [1.0] * len(ANNY_BODY_BONES) + [FINGER_PRIOR_WEIGHT] * (len(ANNY_POSE_BONES) -
                                                                                  len(ANNY_BODY_BONES))
        self.prior_weights = torch.tensor(weights, dtype=torch.float32)

    @property
    def device(self) -> torch.device:
        return self.core.device

    def to(self, device) -> "AnnyBody":
        with _CORE_LOCK:
            self.core.to(device)
        return self

    def default_betas(self) -> torch.Tensor:
        return torch.full((self.num_betas,), DEFAULT_PHENOTYPE, dtype=torch.float32, device=self.device)

    def shape_prior(self, betas: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ||betas - default||² plus a steep penalty outside [0, 1]."""
        betas = self.check_betas(betas)
        outside = torch.relu(-betas) + torch.relu(betas - 1)
        return ((betas - DEFAULT_PHENOTYPE).pow(2) + SHAPE_RANGE_WEIGHT * outside.pow(2)).sum(-1).mean()

    def forward(self, pose, betas, expression=None) -> BodyOutput:
        pose = self.check_pose(pose)
        batch = len(pose)
        betas = self.check_betas(betas, batch)
        if expression is not None and torch.as_tensor(expression).numel():
            raise MarionetteError("Anny has no facial expression parameters.", "Pass expression=None for Anny.")
        core = self.core
        to_body = core.to_body
        # body-space rotation vectors → anny's frame (r_anny = C^T r_body, rows: r @ C)
        rotvec = pose[:, 3:].reshape(batch, -1, 3) @ to_body
        deltas = torch.eye(4, dtype=torch.float32, device=self.device).repeat(batch, len(core.bone_labels), 1, 1)
        deltas[:, core.pose_bone_ids, :3, :3] = axis_angle_to_matrix(rotvec)
        vertices, bone_poses = core.pose(deltas, betas)
        heads = bone_poses[:, :, :3, 3]
        coco = torch.einsum("kv,bvd->bkd", core.coco_weights, vertices)
        stacked = torch.cat([coco, heads, vertices[:, core.tip_vertices]], 1)
        root = heads[:, :1]
        hands = stacked[:, core.hand_index.reshape(-1)].reshape(batch, 2, 21, 3)
        shoulders = [COCO_ROWS.index(n) for n in SHOULDERS]
        neck = coco[:, shoulders].mean(1, keepdim=True)
        body18 = torch.cat([coco[:, :1], neck, coco[:, 1:]], 1)        # COCO_ROWS is OPENPOSE18 minus the neck
        body = lambda p: (p - root.reshape(batch, *([1] * (p.dim() - 2)), 3)) @ to_body.T  # noqa: E731
        return BodyOutput(vertices=body(vertices), body18=body(body18), hands=body(hands), face=None)


# --------------------------------------------------------------------- synthetic ground truth

def betas_from_phenotype(phenotype) -> np.ndarray:
    """[6] betas from a phenotype mapping or `models.synthetic.actor.Phenotype` (missing keys = 0.5)."""
    values = phenotype.kwargs() if hasattr(phenotype, "kwargs") else dict(phenotype)
    unknown = set(values) - set(PHENOTYPE_ORDER)
    if unknown:
        raise MarionetteError(f"Unknown anny phenotype keys {sorted(unknown)}.", f"Use {', '.join(PHENOTYPE_ORDER)}.")
    return np.array([float(values.get(k, DEFAULT_PHENOTYPE)) for k in PHENOTYPE_ORDER], np.float32)


def _rotvec(matrices: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_matrix(np.asarray(matrices, np.float64)).as_rotvec()


def pose_from_bone_rotations(rotations: dict) -> np.ndarray:
    """[pose_dim] pose from {anny bone: 3x3 rotation in anny's 'local-ref' frame} (as
    `models.synthetic.actor.procedural_motion` makes them); "root" becomes the global orientation."""
    pose = np.zeros(AnnyBody.pose_dim, np.float32)
    for bone, rot in rotations.items():
        if bone == "root":
            slot = 0
        elif bone in ANNY_POSE_BONES:
            slot = 1 + ANNY_POSE_BONES.index(bone)
        else:
            raise MarionetteError(f"anny bone {bone!r} is not part of the pose layout.",
                                  f"Rotate only these bones: root, {', '.join(ANNY_POSE_BONES)}.")
        body_rot = ANNY_TO_BODY @ np.asarray(rot, np.float64) @ ANNY_TO_BODY.T
        pose[3 * slot:3 * slot + 3] = _rotvec(body_rot)
    return pose


def sequence_from_actor(phenotype, poses: list, camera, ground: bool = True) -> BodySequence:
    """The synthetic actor's ground truth as a BodySequence: same phenotype and bone rotations, and
    the pose/translation that put the body where `models.synthetic` renders it through its scene
    `camera` (anny world, OpenGL axes; `ground` = each frame's lowest vertex on the floor, as
    `pose_actor` does). Global orientations and translations are in our OpenCV camera space."""
    body = AnnyBody()
    betas = betas_from_phenotype(phenotype)
    pose = np.stack([pose_from_bone_rotations(p) for p in poses]) if poses else np.zeros((0, body.pose_dim))
    # OpenGL camera (x right, y up, z back) → OpenCV (y down, z forward); anny world → camera rotation
    world_to_cv = np.diag([1.0, -1.0, -1.0]) @ np.asarray(camera.rotation, np.float64).T
    global_rot = ANNY_TO_BODY @ _matrices(poses) @ ANNY_TO_BODY.T                   # body-space root rotations
    shift = np.zeros((len(poses), 3))
    if ground and len(poses):
        with torch.no_grad():
            local = pose.copy()
            local[:, :3] = 0
            vertices = body.forward(torch.as_tensor(local), torch.as_tensor(betas)).vertices.cpu().numpy()
        heights = np.einsum("tj,tvj->tv", global_rot[:, 1], vertices.astype(np.float64))  # world z = body y
        shift[:, 2] = -heights.min(axis=1)
    pose[:, :3] = _rotvec(world_to_cv @ ANNY_TO_BODY.T @ global_rot) if len(poses) else pose[:, :3]
    translation = (shift - np.asarray(camera.position, np.float64)) @ world_to_cv.T
    cam = Camera(float(camera.focal), int(camera.width), int(camera.height))
    return BodySequence("anny", body.gender, betas, np.zeros(0, np.float32), pose, translation, cam,
                        info={"source": "synthetic actor ground truth"})


def _matrices(poses: list) -> np.ndarray:
    """[T, 3, 3] each frame's root rotation (identity when absent)."""
    return np.stack([np.asarray(p.get("root", np.eye(3)), np.float64) for p in poses]) if poses else np.zeros((0, 3, 3))
