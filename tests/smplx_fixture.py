"""A small synthetic file with SMPL-X's structure (not the licensed model) for tests.

55 joints in SMPL-X's kinematic tree on a rough T-pose (the person faces +z, x = the person's left),
one octahedron of 6 vertices per joint (330 vertices, 440 faces), rigidly skinned to its joint,
joint regressor = octahedron centre, 10 shape + 10 head-only expression directions, zero pose
correctives, 51 static + 79 x 17 dynamic face landmark entries. `smplx` hard-codes the vertex ids of its 21 extra
keypoints for the real 10,475-vertex mesh, so tests construct the model inside `small_vertex_ids()`.
"""
from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np

# SMPL-X parents in smplx.joint_names order (pelvis, body 1-21, jaw, eyes, left hand, right hand).
PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53])
OCTAHEDRON = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
OCTA_FACES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
RADIUS = 0.02
PX, NX, PY, NY, PZ, NZ = range(6)   # octahedron corners: +x, -x, +y, -y, +z (front), -z (back)

# Offset of each body joint from its parent, for the left side (x > 0); the right side mirrors x.
BODY_OFFSETS = {1: (0.09, -0.08, 0), 3: (0, 0.11, 0), 4: (0, -0.40, 0), 6: (0, 0.13, 0), 7: (0, -0.42, 0),
                9: (0, 0.05, 0), 10: (0, -0.05, 0.12), 12: (0, 0.22, 0), 13: (0.07, 0.12, 0), 15: (0, 0.12, 0.02),
                16: (0.10, 0.0, 0), 18: (0.27, 0, 0), 20: (0.25, 0, 0), 22: (0, -0.05, 0.06),
                23: (0.03, 0.04, 0.08)}
MIRROR = {2: 1, 5: 4, 8: 7, 11: 10, 14: 13, 17: 16, 19: 18, 21: 20, 24: 23}
# First joint of each finger in smplx order (index, middle, pinky, ring, thumb) and its knuckle offset.
KNUCKLES = ((0.09, 0.0, 0.03), (0.09, 0.0, 0.01), (0.08, 0.0, -0.03), (0.085, 0.0, -0.01), (0.03, -0.01, 0.04))


def joint_positions() -> np.ndarray:
    """[55, 3] rest joints, pelvis at (0, 0.95, 0)."""
    offsets = np.zeros((55, 3))
    for j, off in BODY_OFFSETS.items():
        offsets[j] = off
    for right, left in MIRROR.items():
        offsets[right] = offsets[left] * (-1, 1, 1)
    for hand, sign in ((25, 1.0), (40, -1.0)):
        for f, knuckle in enumerate(KNUCKLES):
            first = hand + 3 * f
            offsets[first] = np.array(knuckle) * (sign, 1, 1)
            offsets[first + 1] = offsets[first + 2] = (sign * 0.03, 0, 0.01 if f == 4 else 0)
    joints = np.zeros((55, 3))
    joints[0] = (0, 0.95, 0)
    for j in range(1, 55):
        joints[j] = joints[PARENTS[j]] + offsets[j]
    return joints


def vertex(joint: int, corner: int) -> int:
    return 6 * joint + corner


# The 21 extra keypoints smplx reads (names as in smplx.vertex_ids), remapped into the small mesh.
SMALL_VERTEX_IDS = {
    "nose": vertex(15, PZ), "reye": vertex(24, PZ), "leye": vertex(23, PZ), "rear": vertex(15, NX),
    "lear": vertex(15, PX), "LBigToe": vertex(10, PZ), "LSmallToe": vertex(10, PX), "LHeel": vertex(7, NZ),
    "RBigToe": vertex(11, PZ), "RSmallToe": vertex(11, NX), "RHeel": vertex(8, NZ),
    **{f"{s}{finger}": vertex(last, PX if s == "l" else NX)
       for s, hand in (("l", 25), ("r", 40))
       for finger, last in (("index", hand + 2), ("middle", hand + 5), ("pinky", hand + 8), ("ring", hand + 11),
                            ("thumb", hand + 14))},
}


def build(seed: int = 0) -> dict:
    """The model dictionary (same keys, dtypes and shapes as a real SMPL-X v1.1 file, smaller)."""
    rng = np.random.default_rng(seed)
    joints = joint_positions()
    vertices = (joints[:, None] + OCTAHEDRON * RADIUS).reshape(-1, 3)
    faces = (OCTA_FACES[None] + 6 * np.arange(55)[:, None, None]).reshape(-1, 3)
    owner = np.repeat(np.arange(55), 6)
    weights = np.zeros((len(vertices), 55))
    weights[np.arange(len(vertices)), owner] = 1.0
    head_faces = np.arange(8 * 15, 8 * 16)   # landmarks sit on the head octahedron
    shapedirs = rng.standard_normal((len(vertices), 3, 20)) * 1e-2
    shapedirs[~np.isin(owner, (15, 22, 23, 24)), :, 10:] = 0     # expressions move only the head
    return dict(
        v_template=vertices.astype(np.float32),
        f=faces.astype(np.uint32),
        J_regressor=(weights.T / 6).astype(np.float32),
        weights=weights.astype(np.float32),
        kintree_table=np.stack([PARENTS, np.arange(55)]).astype(np.uint32),   # root parent wraps to 2**32-1
        shapedirs=shapedirs.astype(np.float32),
        posedirs=np.zeros((len(vertices), 3, 54 * 9), np.float32),
        hands_componentsl=np.eye(45, dtype=np.float32), hands_componentsr=np.eye(45, dtype=np.float32),
        hands_meanl=np.zeros(45, np.float32), hands_meanr=np.zeros(45, np.float32),
        lmk_faces_idx=rng.choice(head_faces, 51).astype(np.int64),
        lmk_bary_coords=np.full((51, 3), 1 / 3, np.float32),
        dynamic_lmk_faces_idx=rng.choice(head_faces, (79, 17)).astype(np.int64),
        dynamic_lmk_bary_coords=np.full((79, 17, 3), 1 / 3, np.float32),
    )


def write_fixture(folder, gender: str = "NEUTRAL", ext: str = "npz", seed: int = 0) -> Path:
    """Write SMPLX_{gender}.{ext} into `folder`; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"SMPLX_{gender.upper()}.{ext}"
    data = build(seed)
    if ext == "npz":
        np.savez_compressed(path, **data)
    else:
        with open(path, "wb") as fh:
            pickle.dump(data, fh)
    return path


@contextlib.contextmanager
def small_vertex_ids():
    """smplx builds its keypoint selector from these ids while the context is open."""
    import smplx.body_models
    table = smplx.body_models.VERTEX_IDS
    saved = table["smplx"]
    table["smplx"] = SMALL_VERTEX_IDS
    try:
        yield
    finally:
        table["smplx"] = saved
