"""SMPL-X (the `smplx` package, the user's licensed model files) behind the BodyModel interface.

Pose layout (`pose_dim` = 165, one axis-angle triple per SMPL-X joint in `smplx.joint_names` order):
global orientation 0:3 (not applied by `forward`, see model.py), body 3:66 (joints 1-21), jaw 66:69,
left eye 69:72, right eye 72:75, left hand 75:120, right hand 120:165. Hands are full axis-angle
(`use_pca=False`) relative to a flat hand (`flat_hand_mean=True`), so the zero pose is the T-pose with
flat hands. `num_betas` = 10, `num_expression` = 10.

body18 comes from the SMPL-X joints plus the nose/eye/ear vertex keypoints smplx appends (neck =
shoulder mean); hands from the finger joints plus the fingertip vertex keypoints; face = the 51
static landmarks (iBUG 17-67) after the 17 dynamic jaw-line landmarks (iBUG 0-16). The jaw line
follows the head's rotation relative to the body (global orientation not included).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import MarionetteError
from .joint_maps import (OPENPOSE18, SHOULDERS, SMPLX_BODY_JOINTS, SMPLX_CONTOUR17, SMPLX_FACE51, SMPLX_HAND21,
                         SMPLX_NUM_JOINTS, smplx_part_of_joint)
from .model import FINGER_PRIOR_WEIGHT, BodyModel, BodyOutput, hinge_from_rest

MODEL_FOLDER_HINT = "ComfyUI/models/smplx"
SMPLX_SITE = "https://smpl-x.is.tue.mpg.de"
EXTENSIONS = ("npz", "pkl")


def _licence_fix(name: str) -> str:
    return (f"Download SMPL-X from {SMPLX_SITE} (free registration; the model files come under the SMPL-X "
            f"licence, so this pack cannot ship them) and put {name} in {MODEL_FOLDER_HINT}. "
            "Or use the Anny body model, which needs no download.")


def find_model_file(model_dir: str | None, gender: str) -> Path:
    """`model_dir/SMPLX_{GENDER}.npz` (or .pkl; also looked for in a `smplx` subfolder)."""
    stem = f"SMPLX_{gender.upper()}"
    if not model_dir:
        raise MarionetteError(f"No SMPL-X model folder was given, so {stem}.npz cannot be found.",
                              _licence_fix(f"{stem}.npz"))
    folder = Path(model_dir).expanduser()
    for base in (folder, folder / "smplx"):
        for ext in EXTENSIONS:
            if (base / f"{stem}.{ext}").is_file():
                return base / f"{stem}.{ext}"
    raise MarionetteError(f"The SMPL-X model file {stem}.npz (or {stem}.pkl) is not in {folder}.",
                          _licence_fix(f"{stem}.npz"))


def _build(path: Path, gender: str, face_contour: bool):
    import smplx
    return smplx.SMPLX(str(path), gender=gender, ext=path.suffix.lstrip("."), num_betas=10,
                       num_expression_coeffs=10, use_pca=False, flat_hand_mean=True,
                       use_face_contour=face_contour, create_transl=False, batch_size=1)


def _load(path: Path, gender: str):
    """The smplx module, with the face jaw line when the file has its dynamic landmarks."""
    try:
        import smplx  # noqa: F401
    except ImportError as e:
        raise MarionetteError(f"The smplx package cannot be imported ({e}).", "pip install smplx==0.1.28") from e
    try:
        try:
            return _build(path, gender, True), True
        except (AttributeError, KeyError):       # no dynamic_lmk_* entries: static landmarks only
            return _build(path, gender, False), False
    except MarionetteError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise MarionetteError(f"{path} could not be read as an SMPL-X model ({type(e).__name__}: {e}).",
                              _licence_fix(path.name)) from e


class SMPLXBody(BodyModel):
    """SMPL-X through the shared interface (see the module doc for the layouts)."""

    name = "smplx"
    num_betas = 10
    num_expression = 10
    pose_dim = 3 * SMPLX_NUM_JOINTS

    def __init__(self, path: Path, gender: str = "neutral"):
        self.gender = gender
        self.path = Path(path)
        self.model, self.has_contour = _load(self.path, gender)
        from smplx.joint_names import JOINT_NAMES
        self.model.requires_grad_(False)
        self.device = torch.device("cpu")
        num_vertices = int(self.model.v_template.shape[0])
        extra = self.model.vertex_joint_selector.extra_joints_idxs
        if int(extra.max()) >= num_vertices:
            raise MarionetteError(f"{self.path} has {num_vertices} vertices, too few for SMPL-X's keypoint "
                                  f"vertex {int(extra.max())}: it is not an SMPL-X model file.",
                                  _licence_fix(self.path.name))
        self.pose_names = ("global_orient",) + tuple(JOINT_NAMES[1:SMPLX_NUM_JOINTS])
        self.faces = np.ascontiguousarray(np.asarray(self.model.faces).astype(np.int32))
        owner = self.model.lbs_weights.argmax(1).cpu().numpy()
        self.part_labels = np.array([smplx_part_of_joint(j) for j in range(SMPLX_NUM_JOINTS)], np.int64)[owner]
        index = {name: i for i, name in enumerate(JOINT_NAMES)}   # first match: 'right_eye' is the keypoint
        self.body_rows = torch.tensor([index[n] for n in OPENPOSE18 if n != "neck"])
        self.shoulder_rows = torch.tensor([index[n] for n in SHOULDERS])
        self.hand_rows = torch.tensor([[index[f"{side}_{n}"] for n in SMPLX_HAND21] for side in ("left", "right")])
        weights = [0.0] + [1.0] * SMPLX_BODY_JOINTS + [FINGER_PRIOR_WEIGHT] * (SMPLX_NUM_JOINTS - 1 -
                                                                              SMPLX_BODY_JOINTS)
        self.prior_weights = torch.tensor(weights, dtype=torch.float32)
        self.hinges = self._hinges()

    def _hinges(self):
        joints = (self.model.J_regressor @ self.model.v_template).cpu().numpy().astype(np.float64)
        out = []
        for parent, joint, child, bend in ((16, 18, 20, 1.0), (17, 19, 21, 1.0), (1, 4, 7, -1.0), (2, 5, 8, -1.0)):
            out.append(hinge_from_rest(joint, joints[parent], joints[joint], joints[child], np.array([0, 0, bend])))
        return tuple(out)

    def to(self, device) -> "SMPLXBody":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def default_betas(self) -> torch.Tensor:
        return torch.zeros(self.num_betas, dtype=torch.float32, device=self.device)

    def shape_prior(self, betas: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of ||betas||²."""
        return self.check_betas(betas).pow(2).sum(-1).mean()

    def forward(self, pose, betas, expression=None) -> BodyOutput:
        pose = self.check_pose(pose)
        batch = len(pose)
        betas = self.check_betas(betas, batch).expand(batch, -1)
        expression = self.check_expression(expression, batch)
        out = self.model(betas=betas, expression=expression, global_orient=torch.zeros_like(pose[:, :3]),
                         body_pose=pose[:, 3:66], jaw_pose=pose[:, 66:69], leye_pose=pose[:, 69:72],
                         reye_pose=pose[:, 72:75], left_hand_pose=pose[:, 75:120], right_hand_pose=pose[:, 120:165],
                         return_verts=True, return_shaped=False)
        root = out.joints[:, :1]
        joints = out.joints - root
        rows = joints[:, self.body_rows.to(self.device)]
        neck = joints[:, self.shoulder_rows.to(self.device)].mean(1, keepdim=True)
        body18 = torch.cat([rows[:, :1], neck, rows[:, 1:]], 1)        # OPENPOSE18 minus the neck, neck second
        hands = joints[:, self.hand_rows.to(self.device).reshape(-1)].reshape(batch, 2, 21, 3)
        face = torch.cat([joints[:, SMPLX_CONTOUR17], joints[:, SMPLX_FACE51]], 1) if self.has_contour else None
        return BodyOutput(vertices=out.vertices - root, body18=body18, hands=hands, face=face)
