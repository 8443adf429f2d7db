"""A synthetic actor: the free anny body model, a phenotype and procedural motion.

`pose_actor` turns a phenotype plus per-frame bone rotations into posed vertices (metres,
Z up, floor at z = 0, the person facing -Y) and anny's 23 COCO keypoints. anny's +X is the
person's LEFT, and its `.L` bones and `left_*` keypoints are the person's left side.

anny and torch are imported lazily: importing this module is cheap, and the first
`body_model()` call builds (or loads from ANNY_CACHE_DIR) the model once per process.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import MarionetteError

PHENOTYPE_KEYS = ("gender", "age", "muscle", "weight", "height", "proportions")


@dataclass(frozen=True)
class Phenotype:
    """anny's body-shape controls, each in [0, 1] (gender 0 = male, 1 = female; age 2/3 = young adult)."""
    gender: float = 0.5
    age: float = 0.667
    muscle: float = 0.5
    weight: float = 0.5
    height: float = 0.5
    proportions: float = 0.5

    def __post_init__(self):
        for key, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise MarionetteError(f"Phenotype {key}={value!r} is outside [0, 1].",
                                      "Pass phenotype values between 0 and 1.")

    def kwargs(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


# The driving actor and the reference person differ on purpose: a tall slim man against a
# short heavier woman, so identity transfer and retargeting have something to do.
DRIVER = Phenotype(gender=0.0, age=0.667, muscle=0.6, weight=0.35, height=0.8, proportions=0.6)
REFERENCE = Phenotype(gender=1.0, age=0.6, muscle=0.4, weight=0.85, height=0.15, proportions=0.3)


@dataclass
class ActorPoses:
    """Posed geometry of one actor over T frames (float32, metres, floor at z = 0)."""
    vertices: np.ndarray    # [T, V, 3]
    keypoints: np.ndarray   # [T, 23, 3] anny COCO keypoints, labels in `labels`
    labels: tuple[str, ...]
    faces: np.ndarray       # [F, 3] int32


class BodyModel:
    """One anny model plus its COCO keypoint regressor and the rest-pose facts the scene needs."""

    def __init__(self):
        try:
            import anny
            import torch
        except ImportError as e:
            raise MarionetteError(f"The anny body model cannot be imported ({e}).",
                                  "pip install anny torch (see .ci/lock.txt for tested versions).") from e
        self.torch = torch
        # Pure-torch skinning: deterministic and free of NVIDIA Warp's CUDA probing.
        self.model = anny.Anny(skinning_method="lbs")
        self.regressor = anny.KeypointsRegressor.coco(self.model)
        self.bone_labels = tuple(self.model.bone_labels)
        self.bone_index = {name: i for i, name in enumerate(self.bone_labels)}
        self.faces = np.ascontiguousarray(self.model.faces.cpu().numpy().astype(np.int32))
        self.uv = self.model.texture_coordinates.cpu().numpy().astype(np.float32)
        self.face_uv = self.model.face_texture_coordinate_indices.cpu().numpy().astype(np.int32)
        weights = self.model.vertex_bone_weights.cpu().numpy()
        indices = self.model.vertex_bone_indices.cpu().numpy()
        self.dominant_bone = indices[np.arange(len(indices)), weights.argmax(1)]
        with torch.no_grad():
            rest = self.model(pose_parameters=None)
        self.rest_vertices = rest["vertices"][0].cpu().numpy()
        self.rest_heads = rest["bone_poses"][0, :, :3, 3].cpu().numpy()
        self.cache: dict = {}  # derived data (labels, textures, ...) that other modules compute once

    def vertex_in_bones(self, prefixes: tuple, side: str = "") -> np.ndarray:
        """[V] bool: the vertex's dominant bone starts with one of `prefixes` (and is on `side`:
        'L', 'R', or '' for any; unsided bones such as the spine always match a side)."""
        def keep(name: str) -> bool:
            return name.startswith(tuple(prefixes)) and (not side or "." not in name or name.endswith("." + side))
        per_bone = np.array([keep(name) for name in self.bone_labels])
        return per_bone[self.dominant_bone]

    def bone_id(self, name: str) -> int:
        if name not in self.bone_index:
            raise MarionetteError(f"anny has no bone named {name!r}.", "Use a name from BodyModel.bone_labels.")
        return self.bone_index[name]


_MODEL: list[BodyModel] = []
_MODEL_LOCK = threading.Lock()


def body_model() -> BodyModel:
    """The process-wide anny model (built on first use; ~60 s once without ANNY_CACHE_DIR content)."""
    with _MODEL_LOCK:
        if not _MODEL:
            _MODEL.append(BodyModel())
        return _MODEL[0]


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation about `axis` (any length) by `degrees`, right-handed (Rodrigues)."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
SIDES = {"L": 1.0, "R": -1.0}  # sign that turns "away from the body" into +X for left, -X for right


def _add(pose: dict, bone: str, rot: np.ndarray) -> None:
    """Compose a rotation onto a bone (applied after what is already there)."""
    pose[bone] = rot @ pose.get(bone, np.eye(3))


def _rise_and_fall(t: float) -> float:
    """0 -> 1 -> 0 once per 2 s (at time t in seconds): the cycle of arms, squat, bow, kneel, lunge and reach."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * t / 2.0)


def _walk(pose: dict, t: float, amp: float) -> None:
    """Walking in place: alternate knee lifts, counter-swinging arms, a little torso twist."""
    phase = 2 * math.pi * t  # one stride cycle per second
    for side, sign, offset in (("L", 1.0, 0.0), ("R", -1.0, math.pi)):
        lift = max(0.0, math.sin(phase + offset))             # only the swing leg lifts
        _add(pose, f"upperleg01.{side}", rotation(X, -40 * amp * lift))   # hip flexion is -X
        _add(pose, f"lowerleg01.{side}", rotation(X, 65 * amp * lift))    # knee bend is +X
        _add(pose, f"foot.{side}", rotation(X, -15 * amp * lift))
        swing = math.sin(phase + offset + math.pi)           # the arm swings against its leg
        _add(pose, f"upperarm01.{side}", rotation(Y, sign * 25))          # arms nearer the body
        _add(pose, f"upperarm01.{side}", rotation(X, -30 * amp * swing))
        _add(pose, f"lowerarm01.{side}", rotation(X, -20 * amp * (1 + swing) / 2))
    _add(pose, "spine03", rotation(Z, 6 * amp * math.sin(phase)))


def _wave(pose: dict, t: float, amp: float) -> None:
    """Right hand raised and waving side to side in the frontal plane (+Y raises the right arm)."""
    _add(pose, "upperarm01.R", rotation(Y, 60 + 10 * amp))
    _add(pose, "lowerarm01.R", rotation(Y, 75 + 30 * amp * math.sin(2 * math.pi * 1.5 * t)))


def _arms(pose: dict, t: float, amp: float) -> None:
    """Both arms rise sideways to above the head and come back down, once per 2 s."""
    up = _rise_and_fall(t)
    for side, sign in SIDES.items():
        _add(pose, f"upperarm01.{side}", rotation(Y, -sign * 110 * amp * up))


def _turn(pose: dict, t: float, amp: float, duration: float) -> None:
    """The whole body turns left and right about the vertical axis, one cycle per clip."""
    _add(pose, "root", rotation(Z, 40 * amp * math.sin(2 * math.pi * t / max(duration, 1e-6))))


def _squat(pose: dict, t: float, amp: float) -> None:
    """Knees and hips bend together (a shallow squat), once per 2 s; arms reach forward."""
    depth = _rise_and_fall(t) * amp
    for side in SIDES:
        _add(pose, f"upperleg01.{side}", rotation(X, -70 * depth))
        _add(pose, f"lowerleg01.{side}", rotation(X, 110 * depth))
        _add(pose, f"foot.{side}", rotation(X, -40 * depth))
        _add(pose, f"upperarm01.{side}", rotation(X, -70 * depth))
    _add(pose, "spine04", rotation(X, 25 * depth))


def _bow(pose: dict, t: float, amp: float) -> None:
    """The torso bows forward from the lower spine, knees straight, once per 2 s: the head and shoulders
    come down and towards the camera (spine +X leans forward)."""
    depth = _rise_and_fall(t) * amp
    for bone, degrees in (("spine05", 25), ("spine04", 15), ("spine03", 10)):
        _add(pose, bone, rotation(X, degrees * depth))


def _bend(pose: dict, t: float, amp: float) -> None:
    """The torso bends to the left and right from the lower spine, knees straight, once per 2 s: the head
    and shoulders sway sideways and a little down (spine +Y leans to the actor's left)."""
    side = math.sin(2 * math.pi * t / 2.0) * amp
    for bone, degrees in (("spine05", 18), ("spine04", 12), ("spine03", 8)):
        _add(pose, bone, rotation(Y, degrees * side))


def _kneel(pose: dict, t: float, amp: float) -> None:
    """Down on the right knee and up again, once per 2 s, torso upright: the left thigh comes forward to
    level with the shin upright, the right knee drops to the floor behind it (the whole body lowers like a
    squat does, the legs asymmetric and the arms left to the other motions)."""
    depth = _rise_and_fall(t) * amp
    _add(pose, "upperleg01.L", rotation(X, -85 * depth))
    _add(pose, "lowerleg01.L", rotation(X, 90 * depth))
    _add(pose, "upperleg01.R", rotation(X, 10 * depth))
    _add(pose, "lowerleg01.R", rotation(X, 95 * depth))
    _add(pose, "foot.R", rotation(X, 30 * depth))


def _lunge(pose: dict, t: float, amp: float) -> None:
    """A forward lunge and back, once per 2 s, torso upright: the left foot steps forward with its knee bent,
    the right leg stays back with its knee bent and off the floor (the body lowers less than in a kneel)."""
    depth = _rise_and_fall(t) * amp
    _add(pose, "upperleg01.L", rotation(X, -60 * depth))
    _add(pose, "lowerleg01.L", rotation(X, 70 * depth))
    _add(pose, "foot.L", rotation(X, -10 * depth))
    _add(pose, "upperleg01.R", rotation(X, 20 * depth))
    _add(pose, "lowerleg01.R", rotation(X, 60 * depth))
    _add(pose, "foot.R", rotation(X, 25 * depth))


def _reach(pose: dict, t: float, amp: float) -> None:
    """Both arms reach forward to shoulder height, elbows nearly straight, and come back, once per 2 s."""
    up = _rise_and_fall(t) * amp
    for side in SIDES:
        _add(pose, f"upperarm01.{side}", rotation(X, -85 * up))
        _add(pose, f"lowerarm01.{side}", rotation(X, -10 * up))


def _neutral(pose: dict) -> None:
    """A relaxed standing pose: arms lowered from anny's A-pose, forearms hanging."""
    for side, sign in SIDES.items():
        _add(pose, f"upperarm01.{side}", rotation(Y, sign * 22))
        _add(pose, f"lowerarm01.{side}", rotation(Y, sign * 8))


# the motions of one cycle per 2 s (or per stride); "turn" takes the clip's length and "still" does nothing
_MOVES = {"walk": _walk, "wave": _wave, "arms": _arms, "squat": _squat, "bow": _bow, "bend": _bend,
          "kneel": _kneel, "lunge": _lunge, "reach": _reach}
FIRST_MOTIONS = ("still", "walk", "wave", "arms", "turn", "squat")
LATER_MOTIONS = ("bow", "bend", "kneel", "lunge", "reach")
MOTIONS = FIRST_MOTIONS + LATER_MOTIONS


def parse_motion(motion: str) -> list[str]:
    parts = [p.strip() for p in str(motion).split("+") if p.strip()]
    bad = [p for p in parts if p not in MOTIONS]
    if not parts or bad:
        raise MarionetteError(f"Unknown motion {motion!r}.",
                              f"Combine these with '+': {', '.join(MOTIONS)} (e.g. 'walk+wave+turn').")
    return parts


def procedural_motion(motion: str, frames: int, fps: float, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per-frame {bone: 3x3 rotation} in anny's 'local-ref' convention for a '+'-joined motion.

    The seed jitters amplitudes (±15 %) and start phase, so different seeds give different clips.
    """
    kinds = parse_motion(motion)
    if frames < 1 or fps <= 0:
        raise MarionetteError(f"Bad clip length: frames={frames}, fps={fps}.", "Use frames >= 1 and fps > 0.")
    rng = np.random.default_rng(seed)
    amp = {k: float(rng.uniform(0.85, 1.15)) for k in FIRST_MOTIONS}
    t0 = float(rng.uniform(0.0, 0.25))
    # motions added later draw after t0, so a seed still gives the clips it gave before they existed
    amp.update({k: float(rng.uniform(0.85, 1.15)) for k in LATER_MOTIONS})
    duration = frames / fps
    poses = []
    for i in range(frames):
        t, pose = t0 + i / fps, {}
        if "walk" not in kinds and "squat" not in kinds and "arms" not in kinds:
            _neutral(pose)
        for kind in kinds:
            if kind == "turn":
                _turn(pose, i / fps, amp[kind], duration)
            elif kind != "still":
                _MOVES[kind](pose, t, amp[kind])
        poses.append(pose)
    return poses


def _pose_tensor(body: BodyModel, poses: list[dict[str, np.ndarray]]):
    torch = body.torch
    mats = np.tile(np.eye(4), (len(poses), len(body.bone_labels), 1, 1))
    for i, pose in enumerate(poses):
        for bone, rot in pose.items():
            mats[i, body.bone_id(bone), :3, :3] = rot
    return torch.as_tensor(mats, dtype=body.model.dtype)


CHUNK = 32


def pose_actor(phenotype: Phenotype, poses: list[dict[str, np.ndarray]], ground: bool = True) -> ActorPoses:
    """Posed vertices and COCO keypoints for each frame's bone rotations.

    With `ground`, each frame is shifted vertically so its lowest vertex touches z = 0 (feet on
    the floor whatever the knees do).
    """
    if not poses:
        raise MarionetteError("No frames to pose.", "Pass at least one pose.")
    body = body_model()
    torch = body.torch
    verts, kps = [], []
    with torch.no_grad():
        for start in range(0, len(poses), CHUNK):   # skinning memory grows with the batch: chunk it
            out = body.model(pose_parameters=_pose_tensor(body, poses[start:start + CHUNK]),
                             phenotype_kwargs=phenotype.kwargs())
            kps.append(body.regressor(out).cpu().numpy())
            verts.append(out["vertices"].cpu().numpy())
    verts, kps = np.concatenate(verts), np.concatenate(kps)
    if ground:
        floor = verts[..., 2].min(axis=1)
        verts[..., 2] -= floor[:, None]
        kps[..., 2] -= floor[:, None]
    return ActorPoses(verts.astype(np.float32), kps.astype(np.float32), tuple(body.regressor.labels), body.faces)
