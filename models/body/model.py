"""One interface over the 3D body models (Anny, SMPL-X).

`forward(pose, betas)` poses the body in *body space* (see types.py: x = the person's left, y up,
the person faces +z, root joint at the origin). The global orientation, the first 3 pose values, is
NOT applied by `forward`: it is part of the body-to-camera transform,
`camera point = R(global_orient) · body point + translation` (`to_camera`). So the zero pose and any
pose with a different global orientation give the same `BodyOutput`.

Pose values are axis-angle rotations about each joint, expressed in body-space axes as they are at
rest, applied in the parent's frame (SMPL's convention; Anny's 'local-ref').
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MarionetteError

GENDERS = ("neutral", "male", "female")
KINDS = ("anny", "smplx")
FINGER_PRIOR_WEIGHT = 0.1    # fingers, jaw and eyes matter less than the body in the pose prior
HINGE_PRIOR_WEIGHT = 10.0    # elbows/knees bending backwards past straight


@dataclass
class BodyOutput:
    vertices: torch.Tensor            # [B, V, 3] body space (root at origin)
    body18: torch.Tensor              # [B, 18, 3] OpenPose-18 joints in body space (neck = shoulder mean)
    hands: torch.Tensor               # [B, 2, 21, 3] left, right hand in OpenPose hand order
    face: torch.Tensor | None         # [B, 68, 3] iBUG-68 face points, or None


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """[..., 3] axis-angle → [..., 3, 3] rotation (Rodrigues), smooth and finite at zero angle."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]          # [..., 1, 1]
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / torch.where(small, 1.0, theta2))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a * k + b * (k @ k)


def to_camera(points: torch.Tensor, pose: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Body-space points [B, N, 3] → camera space: R(pose[:, :3]) · p + translation [B, 3]."""
    rot = axis_angle_to_matrix(pose[..., :3])
    return points @ rot.transpose(-1, -2) + translation[..., None, :]


@dataclass(frozen=True)
class Hinge:
    """An elbow or knee: the pose slot of its joint, the flexion axis (body space, the joint's rest
    frame) and the flexion already present at rest (radians; straight limb = 0)."""
    slot: int
    axis: tuple
    rest_flexion: float


def hinge_from_rest(slot: int, parent: np.ndarray, joint: np.ndarray, child: np.ndarray, bend: np.ndarray) -> Hinge:
    """The hinge of `joint` between segments parent→joint and joint→child at rest; `bend` is the
    direction the child segment moves when the joint flexes (+z for elbows, -z for knees)."""
    upper = (joint - parent) / np.linalg.norm(joint - parent)
    lower = (child - joint) / np.linalg.norm(child - joint)
    axis = np.cross(upper, bend)
    axis = axis / np.linalg.norm(axis)
    rest = float(np.arctan2(np.dot(np.cross(upper, lower), axis), np.dot(upper, lower)))
    return Hinge(int(slot), tuple(float(v) for v in axis), rest)


class BodyModel(ABC):
    """A posable body: torch float32, differentiable w.r.t. pose, betas and expression."""

    name: str
    gender: str
    pose_dim: int
    num_betas: int
    num_expression: int
    faces: np.ndarray                 # [F, 3] int32
    part_labels: np.ndarray           # [V] int64 in 0..23 (SMPL_PARTS)
    pose_names: tuple                 # one name per 3 pose values, "global_orient" first
    hinges: tuple = ()                # elbows and knees for the pose prior
    prior_weights: torch.Tensor       # [pose_dim // 3] weight of each joint in the pose prior (0 for global)
    device: torch.device = torch.device("cpu")   # inputs are moved here; outputs live here

    def zero_pose(self, batch: int) -> torch.Tensor:
        """[B, P] the rest pose with identity global orientation."""
        return torch.zeros(int(batch), self.pose_dim, dtype=torch.float32, device=self.device)

    @abstractmethod
    def to(self, device) -> "BodyModel":
        """Move the model (shared by every user of this cached instance) to `device`; returns self."""

    @abstractmethod
    def default_betas(self) -> torch.Tensor:
        """[S] the average body."""

    @abstractmethod
    def forward(self, pose: torch.Tensor, betas: torch.Tensor, expression: torch.Tensor | None = None) -> BodyOutput:
        """Pose the body (global orientation not applied, see the module doc)."""

    def __call__(self, pose, betas, expression=None) -> BodyOutput:
        return self.forward(pose, betas, expression)

    @abstractmethod
    def shape_prior(self, betas: torch.Tensor) -> torch.Tensor:
        """Scalar penalty, 0 at the average body."""

    def pose_prior(self, pose: torch.Tensor) -> torch.Tensor:
        """[B] L2 of the joint rotations (weighted per joint, global orientation excluded) plus a soft
        limit on elbows and knees bending backwards past straight."""
        pose = self.check_pose(pose)
        rot = pose.reshape(len(pose), -1, 3)
        l2 = ((rot * rot).sum(-1) * self.prior_weights.to(pose.device)).sum(-1)
        if not self.hinges:
            return l2
        slots = [h.slot for h in self.hinges]
        axes = torch.tensor([h.axis for h in self.hinges], dtype=pose.dtype, device=pose.device)
        rest = torch.tensor([h.rest_flexion for h in self.hinges], dtype=pose.dtype, device=pose.device)
        flexion = (rot[:, slots] * axes).sum(-1) + rest
        return l2 + HINGE_PRIOR_WEIGHT * torch.relu(-flexion).pow(2).sum(-1)

    # ------------------------------------------------------------------------------ input checks

    def check_pose(self, pose) -> torch.Tensor:
        pose = torch.as_tensor(pose)
        if pose.dim() == 1:
            pose = pose[None]
        if pose.dim() != 2 or pose.shape[1] != self.pose_dim:
            raise MarionetteError(f"{self.name} pose has shape {tuple(pose.shape)}; expected [B, {self.pose_dim}].",
                                  "Pass the pose in this body model's layout (see its pose_names).")
        return pose.to(self.device, torch.float32)

    def check_betas(self, betas, batch: int | None = None) -> torch.Tensor:
        """[S] or [B, S] → [1 or B, S] float32 (any B when `batch` is None)."""
        betas = torch.as_tensor(betas)
        if betas.dim() == 1:
            betas = betas[None]
        if betas.dim() != 2 or betas.shape[1] != self.num_betas or betas.shape[0] not in (1, batch or len(betas)):
            raise MarionetteError(f"{self.name} betas have shape {tuple(betas.shape)}; expected [{self.num_betas}] "
                                  f"or [{batch}, {self.num_betas}].", "Pass one shape vector, or one per pose.")
        return betas.to(self.device, torch.float32)

    def check_expression(self, expression, batch: int) -> torch.Tensor:
        """None, [E] or [B, E] → [B, E] float32 (zeros when None)."""
        if expression is None:
            return torch.zeros(batch, self.num_expression, dtype=torch.float32, device=self.device)
        expression = torch.as_tensor(expression)
        if expression.dim() == 1:
            expression = expression[None]
        if expression.dim() != 2 or expression.shape[1] != self.num_expression or \
                expression.shape[0] not in (1, batch):
            raise MarionetteError(f"{self.name} expression has shape {tuple(expression.shape)}; expected "
                                  f"[{self.num_expression}] or [{batch}, {self.num_expression}].",
                                  "Pass one expression vector, or one per pose (empty for Anny).")
        return expression.to(self.device, torch.float32).expand(batch, -1)


def check_gender(gender: str) -> str:
    gender = str(gender).strip().lower()
    if gender not in GENDERS:
        raise MarionetteError(f"Unknown body gender {gender!r}.", f"Use one of: {', '.join(GENDERS)}.")
    return gender
