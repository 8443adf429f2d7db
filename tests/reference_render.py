"""Renders the synthetic reference person used by tests/test_reference.py (run this file to regenerate).

A clothed Anny body (PyPI `anny`) drawn with pyrender on CPU (EGL): flat colour per triangle
(skin, shirt, trousers, shoes, hair, eyes, lips), over a smooth wall/floor backdrop, placed
off-centre in a 512×512 frame. Writes into tests/data/:
- person_512.png       the RGB image
- person_512_mask.png  the silhouette (255 = person)
- person_512.json      projected COCO keypoints (nose, eyes, ears...) and the head's pixel box

    source ~/.cache/marionette/env.sh && $MARIONETTE_VENV/bin/python tests/reference_render.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parent / "data"
SIZE = 512
YFOV = math.radians(40.0)
COLOURS = {  # RGB 0..255
    "skin": (214, 160, 128), "shirt": (46, 92, 168), "pants": (58, 58, 72), "shoes": (30, 28, 28),
    "hair": (62, 40, 26), "sclera": (236, 236, 232), "iris": (58, 40, 30), "cavity": (50, 22, 24),
    "lips": (170, 86, 88), "brows": (60, 40, 28),
}
SHIRT = ("spine", "clavicle", "shoulder01", "upperarm01", "upperarm02")
PANTS = ("pelvis", "upperleg", "lowerleg")
SHOES = ("foot", "toe")


def _pose(model, torch):
    import roma

    def rot(axis, deg):
        a = torch.tensor(axis, dtype=model.dtype)
        m = torch.eye(4, dtype=model.dtype)
        m[:3, :3] = roma.rotvec_to_rotmat(a / a.norm() * math.radians(deg))
        return m[None]
    # a relaxed stance: arms a little away from the body, slight turn toward the camera's right
    return {"upperarm01.L": rot((0, 1, 0), 20), "upperarm01.R": rot((0, 1, 0), -20),
            "lowerarm01.L": rot((1, 0, 0), -20), "lowerarm01.R": rot((1, 0, 0), -20),
            "root": rot((0, 0, 1), 10)}


def _face_labels(model, rest_vertices: np.ndarray) -> np.ndarray:
    """One colour name per triangle, from the dominant skinning bone and the face segmentation."""
    from anny.face_segmentation import get_face_segmentation_mask
    faces = model.faces.numpy()
    bones = list(model.bone_labels)
    idx = model.vertex_bone_indices.numpy()
    wts = model.vertex_bone_weights.numpy()
    dominant = np.array([bones[i] for i in idx[np.arange(len(idx)), wts.argmax(1)]])
    tri_bone = dominant[faces[:, 0]]
    labels = np.full(len(faces), "skin", dtype=object)
    for names, colour in ((SHIRT, "shirt"), (PANTS, "pants"), (SHOES, "shoes")):
        labels[[b.startswith(names) for b in tri_bone]] = colour
    centre = rest_vertices[faces].mean(1)
    head = (tri_bone == "head")
    eye_z = rest_vertices[:, 2][np.isin(dominant, ["eye.L", "eye.R"])].mean()
    head_y = rest_vertices[dominant == "head", 1].mean()
    crown = centre[:, 2] > eye_z + 0.055
    back = (centre[:, 1] > head_y + 0.01) & (centre[:, 2] > eye_z - 0.04)
    labels[head & (crown | back)] = "hair"
    brow = head & (centre[:, 2] > eye_z + 0.022) & (centre[:, 2] < eye_z + 0.032) & (centre[:, 1] < head_y - 0.05)
    labels[brow & (np.abs(np.abs(centre[:, 0]) - 0.033) < 0.022)] = "brows"
    seg = lambda names: get_face_segmentation_mask(model, names).numpy()  # noqa: E731
    labels[seg(["eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue"])] = "cavity"
    labels[seg(["eye_front.L", "eye_front.R", "eye_back.L", "eye_back.R"])] = "sclera"
    for side in ("L", "R"):  # iris: the eyeball faces pointing forward (−Y) from the eye centre
        eye = seg([f"eye_front.{side}"])
        centre_eye = rest_vertices[dominant == f"eye.{side}"].mean(0)
        d = centre[eye] - centre_eye
        forward = -d[:, 1] / np.linalg.norm(d, axis=1)
        ids = np.nonzero(eye)[0]
        labels[ids[forward > 0.85]] = "iris"
    lips = head & (centre[:, 1] < head_y - 0.07) & (np.abs(centre[:, 0]) < 0.022) \
        & (np.abs(centre[:, 2] - (eye_z - 0.075)) < 0.008)
    labels[lips & (labels == "skin")] = "lips"
    return labels


def _backdrop() -> np.ndarray:
    y = np.linspace(0.0, 1.0, SIZE)[:, None, None]
    wall = np.array([226, 222, 212]) * (1 - 0.15 * y)
    floor = np.array([150, 112, 78]) * (0.9 + 0.1 * y)
    img = np.where(y < 0.8, wall, floor) * np.ones((1, SIZE, 1))
    return img.astype(np.float32)


def render():
    import anny
    import torch
    np.infty = np.inf  # pyrender 0.1.45 still uses the name NumPy 2 removed
    import pyrender

    model = anny.Anny()
    kreg = anny.KeypointsRegressor.coco(model)
    with torch.no_grad():
        rest = model(pose_parameters=None, phenotype_kwargs=dict(gender=1.0, age=0.667))["vertices"][0].numpy()
        out = model(pose_parameters=_pose(model, torch), phenotype_kwargs=dict(gender=1.0, age=0.667))
        kps = kreg(out)[0].numpy()
    verts = out["vertices"][0].numpy()
    faces = model.faces.numpy()
    labels = _face_labels(model, rest)

    # flat colours: every triangle gets its own three vertices
    pos = verts[faces].reshape(-1, 3).astype(np.float32)
    tri = verts[faces]
    normals = np.repeat(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), 3, 0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    colours = np.repeat(np.array([COLOURS[c] for c in labels], np.float32) / 255.0, 3, 0)
    colours = np.concatenate([colours, np.ones((len(colours), 1), np.float32)], 1)
    prim = pyrender.Primitive(positions=pos, normals=normals.astype(np.float32), color_0=colours,
                              indices=np.arange(len(pos)).reshape(-1, 3),
                              material=pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0],
                                                                          metallicFactor=0.0, roughnessFactor=0.8))
    scene = pyrender.Scene(ambient_light=[0.45, 0.45, 0.45], bg_color=[0.0, 0.0, 0.0, 0.0])
    scene.add(pyrender.Mesh([prim]))

    # camera looking along +Y; person bbox ~84 % of the frame height, centred at 38 % of the width
    zmin, zmax = verts[:, 2].min(), verts[:, 2].max()
    f = (SIZE / 2) / math.tan(YFOV / 2)
    depth = f * (zmax - zmin) / (0.84 * SIZE)
    cz = (zmin + zmax) / 2
    cx = verts[:, 0].mean() + (0.5 - 0.38) * SIZE * depth / f
    cam = np.array([[1, 0, 0, cx], [0, 0, -1, -depth], [0, 1, 0, cz], [0, 0, 0, 1]], np.float64)
    scene.add(pyrender.PerspectiveCamera(yfov=YFOV), pose=cam)
    light = lambda rx, rz: cam @ _rot(rx, rz)  # noqa: E731
    scene.add(pyrender.DirectionalLight(color=[1.0, 1.0, 1.0], intensity=2.5), pose=light(-0.5, -0.4))
    scene.add(pyrender.DirectionalLight(color=[1.0, 1.0, 1.0], intensity=1.0), pose=light(-0.2, 0.6))
    r = pyrender.OffscreenRenderer(SIZE, SIZE)
    rgba, _ = r.render(scene, flags=pyrender.RenderFlags.RGBA)
    r.delete()

    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    img = rgba[..., :3].astype(np.float32) * alpha + _backdrop() * (1 - alpha)
    project = lambda p: np.stack([SIZE / 2 + f * (p[:, 0] - cx) / (p[:, 1] + depth),  # noqa: E731
                                  SIZE / 2 - f * (p[:, 2] - cz) / (p[:, 1] + depth)], -1)
    head = project(verts[np.unique(faces[np.isin(labels, ["skin", "hair", "brows", "lips", "sclera", "iris"])
                                         & _head_faces(model, faces)])])
    meta = {"keypoints": {name: project(kps[i:i + 1])[0].round(2).tolist() for i, name in enumerate(kreg.labels)},
            "head_box": [*head.min(0).round(1).tolist(), *head.max(0).round(1).tolist()]}
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), (alpha[..., 0] > 0.5).astype(np.uint8) * 255, meta


def _head_faces(model, faces) -> np.ndarray:
    bones = list(model.bone_labels)
    idx = model.vertex_bone_indices.numpy()
    wts = model.vertex_bone_weights.numpy()
    dominant = np.array([bones[i] for i in idx[np.arange(len(idx)), wts.argmax(1)]])
    return np.isin(dominant[faces[:, 0]], ["head", "eye.L", "eye.R"])


def _rot(rx: float, rz: float) -> np.ndarray:
    cx_, sx = math.cos(rx), math.sin(rx)
    cz_, sz = math.cos(rz), math.sin(rz)
    a = np.array([[1, 0, 0, 0], [0, cx_, -sx, 0], [0, sx, cx_, 0], [0, 0, 0, 1]])
    b = np.array([[cz_, 0, sz, 0], [0, 1, 0, 0], [-sz, 0, cz_, 0], [0, 0, 0, 1]])
    return b @ a


if __name__ == "__main__":
    image, mask, meta = render()
    DATA.mkdir(exist_ok=True)
    cv2.imwrite(str(DATA / "person_512.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(str(DATA / "person_512_mask.png"), mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (DATA / "person_512.json").write_text(json.dumps(meta, indent=1))
    print({p.name: p.stat().st_size for p in DATA.glob("person_512*")})
