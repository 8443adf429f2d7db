"""pyrender scene for the synthetic actor: clothes painted in UV space, a room, lights, a camera.

Rendering is headless (EGL or OSMesa through PYOPENGL_PLATFORM, set before pyrender is
imported). The camera is a pinhole with square pixels; `Camera.project` is the exact projection
the renderer uses, in continuous pixel coordinates (the top-left image corner is (0, 0)).
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MarionetteError
from .actor import BodyModel

TEXTURE_SIZE = 1024
SKIN, SHIRT, PANTS, SHOES, HAIR, SCLERA, BROW, CAVITY = range(8)

SKIN_TONES = ((0.95, 0.78, 0.66), (0.87, 0.66, 0.52), (0.74, 0.54, 0.40), (0.55, 0.38, 0.27), (0.38, 0.26, 0.18))
HAIR_COLOURS = ((0.08, 0.06, 0.05), (0.25, 0.15, 0.08), (0.50, 0.33, 0.17), (0.78, 0.62, 0.38), (0.45, 0.12, 0.06))
SHIRT_COLOURS = ((0.80, 0.15, 0.15), (0.15, 0.45, 0.75), (0.95, 0.75, 0.20), (0.20, 0.60, 0.35), (0.92, 0.92, 0.90),
                 (0.55, 0.30, 0.60), (0.95, 0.50, 0.20))
PANTS_COLOURS = ((0.15, 0.22, 0.40), (0.12, 0.12, 0.13), (0.45, 0.40, 0.32), (0.30, 0.33, 0.36), (0.55, 0.15, 0.18))
SHOE_COLOURS = ((0.10, 0.10, 0.10), (0.35, 0.35, 0.38), (0.40, 0.25, 0.15), (0.20, 0.30, 0.65))


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB floats in [0, 1]) of one actor's skin and clothes; `long_sleeves` covers the forearms."""
    skin: tuple = SKIN_TONES[1]
    hair: tuple = HAIR_COLOURS[1]
    shirt: tuple = SHIRT_COLOURS[0]
    pants: tuple = PANTS_COLOURS[0]
    shoes: tuple = SHOE_COLOURS[0]
    iris: tuple = (0.30, 0.20, 0.12)
    long_sleeves: bool = False

    @staticmethod
    def sample(seed: int) -> "Appearance":
        rng = np.random.default_rng(seed)
        pick = lambda options: tuple(options[int(rng.integers(len(options)))])  # noqa: E731
        return Appearance(skin=pick(SKIN_TONES), hair=pick(HAIR_COLOURS), shirt=pick(SHIRT_COLOURS),
                          pants=pick(PANTS_COLOURS), shoes=pick(SHOE_COLOURS),
                          iris=pick(((0.30, 0.20, 0.12), (0.20, 0.35, 0.55), (0.25, 0.40, 0.25))),
                          long_sleeves=bool(rng.integers(2)))


def import_pyrender():
    """pyrender, imported headless; a clear error names what is missing."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    if not hasattr(np, "infty"):  # pyrender 0.1.45 still spells np.inf the NumPy-1 way in Mesh.bounds
        np.infty = np.inf
    try:
        import pyrender
    except ImportError as e:
        raise MarionetteError(f"pyrender cannot be imported ({e}).",
                              "pip install pyrender==0.1.45 (headless rendering also needs libEGL, "
                              "e.g. apt-get install libegl1 libgl1-mesa-dri).") from e
    return pyrender


# --------------------------------------------------------------------------------- body texture

def _segmentation_faces(body: BodyModel) -> dict[str, np.ndarray]:
    """anny's UV-space part segmentation, looked up at each face's UV centre (eyes, mouth cavity)."""
    import cv2
    import yaml
    import anny
    root = Path(anny.__file__).parent / "data" / "segmentation"
    image = cv2.imread(str(root / "body_parts_segmentation.png"), cv2.IMREAD_COLOR)[..., ::-1]
    colours = yaml.safe_load((root / "body_parts_segmentation.yaml").read_text())["colors"]
    centre = body.uv[body.face_uv].mean(axis=1)
    h, w = image.shape[:2]
    u = np.clip(np.round(centre[:, 0] * w).astype(int), 0, w - 1)
    v = np.clip(np.round((1 - centre[:, 1]) * h).astype(int), 0, h - 1)
    found = image[v, u].astype(int)
    return {name: np.all(found == np.asarray(rgb), axis=1) for name, rgb in colours.items()}


def face_labels(body: BodyModel, long_sleeves: bool) -> np.ndarray:
    """One clothing/skin label per face, from each face's dominant bone and rest-pose position."""
    key = ("face_labels", bool(long_sleeves))
    if key not in body.cache:
        body.cache[key] = _face_labels(body, bool(long_sleeves))
    return body.cache[key]


def _face_labels(body: BodyModel, long_sleeves: bool) -> np.ndarray:
    corner = body.faces[:, 0]                                # a face takes its first corner's bone
    centre = body.rest_vertices[body.faces].mean(axis=1)
    x, y, z = centre.T
    starts = lambda *prefixes, side="": body.vertex_in_bones(prefixes, side)[corner]  # noqa: E731
    heads = body.rest_heads
    waist = heads[body.bone_id("spine04")][2] + 0.01
    labels = np.full(len(corner), SKIN, np.int8)
    torso = starts("spine", "clavicle", "shoulder01", "pelvis", "root")
    labels[torso & (z >= waist)] = SHIRT
    # Sleeves end at a fraction of the way down the arm (measured along the bone, so the hem is
    # square to the arm): 45 % of the upper arm, or at the wrist for long sleeves.
    for side in ("L", "R"):
        shoulder, elbow, wrist = (heads[body.bone_id(f"{b}.{side}")] for b in ("upperarm01", "lowerarm01", "wrist"))
        arm = starts("upperarm", "lowerarm", "shoulder01", side=side)
        upper = np.clip((centre - shoulder) @ (elbow - shoulder) / np.sum((elbow - shoulder) ** 2), None, 1.0)
        lower = (centre - elbow) @ (wrist - elbow) / np.sum((wrist - elbow) ** 2)
        along = np.where(upper < 1.0, upper, 1.0 + lower)
        labels[arm & (along < (1.9 if long_sleeves else 0.45))] = SHIRT
    labels[(torso & (z < waist)) | starts("upperleg", "lowerleg")] = PANTS
    labels[starts("foot", "toe")] = SHOES
    labels[starts("foot") & (z > heads[body.bone_id("foot.L")][2] + 0.06)] = PANTS  # trouser hem
    eye = heads[body.bone_id("eye.L")]
    head = starts("head")
    # Hair: a cap whose edge runs from 6 cm above the eyes at the front to below them at the back.
    back = np.clip((y - (eye[1] + 0.04)) / 0.10, 0.0, 1.0)
    labels[head & (z - eye[2] > 0.062 - 0.095 * back)] = HAIR
    brow = head & (np.abs(np.abs(x) - abs(eye[0]) - 0.003) < 0.02) & (z - eye[2] > 0.019) & \
        (z - eye[2] < 0.026) & (y < eye[1] + 0.012)
    labels[brow] = BROW
    labels[starts("eye.")] = SCLERA
    seg = _segmentation_faces(body)
    for name in ("eye_cavity.L", "eye_cavity.R", "mouth_cavity", "tongue"):
        if name in seg:
            labels[seg[name]] = CAVITY
    return labels


def _iris_discs(body: BodyModel) -> list[tuple[np.ndarray, float]]:
    """UV centre (pixels) and iris radius (pixels) of each eyeball's front pole."""
    discs = []
    for side in ("L", "R"):
        ids = np.flatnonzero(body.dominant_bone == body.bone_id(f"eye.{side}"))
        centre = body.rest_heads[body.bone_id(f"eye.{side}")]
        d = body.rest_vertices[ids] - centre
        front = ids[np.argmax(-d[:, 1] / np.linalg.norm(d, axis=1))]
        corners = np.argwhere(body.faces == front)
        uv_ids = body.face_uv[corners[:, 0], corners[:, 1]]
        uv = body.uv[uv_ids].mean(axis=0)
        # UV pixels per metre around the pole, from the faces touching it.
        fids = corners[:, 0]
        e3 = np.linalg.norm(body.rest_vertices[body.faces[fids, 0]] - body.rest_vertices[body.faces[fids, 1]], axis=1)
        e2 = np.linalg.norm(body.uv[body.face_uv[fids, 0]] - body.uv[body.face_uv[fids, 1]], axis=1)
        px_per_m = float(np.median(e2 / np.maximum(e3, 1e-6))) * TEXTURE_SIZE
        discs.append((np.array([uv[0], 1 - uv[1]]) * TEXTURE_SIZE, 0.0064 * px_per_m))
    return discs


def _uv_mask(name: str) -> np.ndarray:
    """One of anny's MakeSkin UV masks (e.g. 'lips') as float [S, S] in [0, 1]."""
    import cv2
    import anny
    path = Path(anny.__file__).parent / "data" / "mpfb2" / "textures" / f"mpfb_{name}.jpg"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return np.zeros((TEXTURE_SIZE, TEXTURE_SIZE), np.float32)
    return cv2.resize(mask, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def body_texture(body: BodyModel, appearance: Appearance, seed: int = 0) -> np.ndarray:
    """The actor's albedo texture [S, S, 3] uint8: clothes, hair and face painted into anny's UV layout
    (cached: a few recent appearances are kept)."""
    key = ("texture", appearance, int(seed))
    if key not in body.cache:
        textures = [k for k in body.cache if k[0] == "texture"]
        for old in textures[:-3]:
            del body.cache[old]
        body.cache[key] = _paint_body(body, appearance, seed)
    return body.cache[key]


def _paint_body(body: BodyModel, appearance: Appearance, seed: int) -> np.ndarray:
    import cv2
    s = TEXTURE_SIZE
    labels = face_labels(body, appearance.long_sleeves)
    colour = {SKIN: appearance.skin, SHIRT: appearance.shirt, PANTS: appearance.pants, SHOES: appearance.shoes,
              HAIR: appearance.hair, SCLERA: (0.93, 0.93, 0.90), BROW: appearance.hair, CAVITY: (0.25, 0.08, 0.08)}
    tris = body.uv[body.face_uv] * np.float32(s)
    tris[..., 1] = s - tris[..., 1]
    tris = np.round(tris * 8).astype(np.int32)                 # 3 bits of sub-pixel precision
    img = np.zeros((s, s, 3), np.float32)
    # Seam bleed first (outlines), then the fills on top; the eyes get no bleed (tiny UV islands).
    for label in (SKIN, PANTS, SHIRT, SHOES, HAIR, BROW, CAVITY):
        polys = list(tris[labels == label])
        cv2.polylines(img, polys, True, colour[label], thickness=3, lineType=cv2.LINE_8, shift=3)
    for label in (SKIN, PANTS, SHIRT, SHOES, HAIR, BROW, CAVITY, SCLERA):
        cv2.fillPoly(img, list(tris[labels == label]), colour[label], lineType=cv2.LINE_8, shift=3)
    lips = _uv_mask("lips")[..., None] * 0.6
    lip_colour = np.asarray(appearance.skin) * np.array([0.85, 0.55, 0.55])
    img = img * (1 - lips) + lip_colour * lips
    lids = _uv_mask("eyelids")[..., None] * 0.25
    img = img * (1 - lids)
    for (cx, cy), radius in _iris_discs(body):
        centre = (int(round(cx * 8)), int(round(cy * 8)))
        cv2.circle(img, centre, int(round(radius * 8)), appearance.iris, -1, cv2.LINE_AA, shift=3)
        cv2.circle(img, centre, int(round(radius * 0.45 * 8)), (0.03, 0.03, 0.03), -1, cv2.LINE_AA, shift=3)
    # Fabric and skin grain: mild blurred noise so surfaces are not flat colour.
    rng = np.random.default_rng(seed)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (s, s)).astype(np.float32), (0, 0), 1.2)
    img *= (1 + 0.06 * grain)[..., None]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


@dataclass
class RenderMesh:
    """anny's mesh split at UV seams: render vertex r is body vertex `vertex[r]` with UV `uv[r]`."""
    vertex: np.ndarray    # [R] int
    uv: np.ndarray        # [R, 2] float32
    indices: np.ndarray   # [F, 3] int32 into render vertices


def split_mesh(body: BodyModel) -> RenderMesh:
    if "render_mesh" not in body.cache:
        body.cache["render_mesh"] = _split_mesh(body)
    return body.cache["render_mesh"]


def _split_mesh(body: BodyModel) -> RenderMesh:
    pairs = np.stack([body.faces.ravel(), body.face_uv.ravel()], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return RenderMesh(unique[:, 0], body.uv[unique[:, 1]].astype(np.float32),
                      inverse.reshape(-1, 3).astype(np.int32))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted smooth normals [V, 3] of one mesh (computed on the unsplit mesh: no seams)."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        n[:, k] = sum(np.bincount(faces[:, c], weights=fn[:, k], minlength=len(v)) for c in range(3))
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return n.astype(np.float32)


# --------------------------------------------------------------------------------------- camera

@dataclass
class Camera:
    """Pinhole camera: `rotation` columns are the camera's x (right), y (up), z (backwards) in world."""
    width: int
    height: int
    yfov: float
    position: np.ndarray
    rotation: np.ndarray

    @property
    def focal(self) -> float:
        return (self.height / 2) / math.tan(self.yfov / 2)

    def pose(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.rotation, self.position
        return m

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points [..., 3] -> pixel xy [..., 2] and depth along the view axis [...]."""
        cam = (np.asarray(points, np.float64) - self.position) @ self.rotation
        depth = -cam[..., 2]
        d = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        x = self.width / 2 + self.focal * cam[..., 0] / d
        y = self.height / 2 - self.focal * cam[..., 1] / d
        return np.stack([x, y], axis=-1), depth


def look_rotation(pitch_deg: float) -> np.ndarray:
    """Camera looking along +Y (at the person's front), tilted down by `pitch_deg`."""
    p = math.radians(pitch_deg)
    forward = np.array([0.0, math.cos(p), -math.sin(p)])
    up = np.array([0.0, math.sin(p), math.cos(p)])
    return np.stack([np.array([1.0, 0.0, 0.0]), up, -forward], axis=1)


def fit_camera(vertices: np.ndarray, width: int, height: int, fill: float = 0.8,
               yfov_deg: float = 40.0, pitch_deg: float = 8.0) -> Camera:
    """A static camera that frames every frame's body: its bbox spans `fill` of the frame height
    (or of the width, whichever binds first), centred."""
    if not (0.05 <= fill <= 1.0):
        raise MarionetteError(f"fill={fill} is outside [0.05, 1].", "Use a fill between 0.05 and 1.")
    pts = vertices.reshape(-1, 3)[:: max(1, vertices.reshape(-1, 3).shape[0] // 60000)].astype(np.float64)
    lo, hi = pts.min(0), pts.max(0)
    target = (lo + hi) / 2
    rot = look_rotation(pitch_deg)
    yfov = math.radians(yfov_deg)
    cam = Camera(width, height, yfov, target.copy(), rot)
    dist = (hi[2] - lo[2]) / (2 * math.tan(yfov / 2) * fill) + (hi[1] - lo[1]) / 2
    for _ in range(4):
        cam.position = target + rot[:, 2] * dist
        xy, depth = cam.project(pts)
        bmin, bmax = xy.min(0), xy.max(0)
        scale = max((bmax[0] - bmin[0]) / (fill * width), (bmax[1] - bmin[1]) / (fill * height))
        centre = (bmin + bmax) / 2 - np.array([width / 2, height / 2])
        mean_depth = float(np.median(depth))
        target = target + rot[:, 0] * centre[0] * mean_depth / cam.focal - rot[:, 1] * centre[1] * mean_depth / cam.focal
        dist *= scale
    cam.position = target + rot[:, 2] * dist
    return cam


# ----------------------------------------------------------------------------------------- room

def _floor_texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """Wooden planks (8 per texture width), each with its own tone, grain and staggered joints."""
    import cv2
    base = np.array(rng.choice([(0.62, 0.45, 0.30), (0.72, 0.58, 0.42), (0.45, 0.32, 0.22)]))
    img = np.zeros((size, size, 3), np.float32)
    plank = size // 8
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=1.0, sigmaY=12.0)
    for i in range(8):
        tone = base * rng.uniform(0.85, 1.12)
        img[:, i * plank:(i + 1) * plank] = tone
        img[:, i * plank:i * plank + 2] *= 0.55                      # gap between planks
        joint = int(rng.integers(0, size))
        img[joint:joint + 3, i * plank:(i + 1) * plank] *= 0.6       # end joint
    img *= (1 + 0.08 * grain)[..., None]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _wall_texture(rng: np.random.Generator, width_m: float, height_m: float, px_per_m: int = 128) -> np.ndarray:
    """A painted wall with a skirting board and two framed pictures."""
    import cv2
    w, h = int(width_m * px_per_m), int(height_m * px_per_m)
    paint = np.array(rng.choice([(0.86, 0.84, 0.78), (0.78, 0.84, 0.86), (0.88, 0.80, 0.72), (0.80, 0.86, 0.78)]))
    img = np.ones((h, w, 3), np.float32) * paint
    img *= (1 + 0.025 * cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3))[..., None]
    img *= np.linspace(0.88, 1.0, h, dtype=np.float32)[:, None, None]  # light falls off towards the ceiling
    img[h - int(0.12 * px_per_m):] = (0.95, 0.95, 0.93)             # skirting board (row 0 = top)
    img[h - int(0.12 * px_per_m)] = (0.6, 0.6, 0.6)
    for offset in (-rng.uniform(0.8, 1.3), rng.uniform(0.8, 1.3)):   # metres from the wall's centre
        pw, ph = rng.uniform(0.45, 0.8), rng.uniform(0.35, 0.6)
        x0 = int((width_m / 2 + offset - pw / 2) * px_per_m)
        y0 = int((height_m - rng.uniform(1.5, 1.9) - ph / 2) * px_per_m)
        x1, y1 = x0 + int(pw * px_per_m), y0 + int(ph * px_per_m)
        cv2.rectangle(img, (x0 - 6, y0 - 6), (x1 + 6, y1 + 6), (0.15, 0.12, 0.10), -1)
        inner = np.array(rng.uniform(0.2, 0.9, 3))
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(inner), -1)
        cv2.circle(img, ((x0 + x1) // 2, (y0 + y1) // 2), int(min(pw, ph) * px_per_m / 4), tuple(1 - inner), -1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _quad(pyrender, corners: np.ndarray, uv: np.ndarray, texture: np.ndarray, normal, shade=(1.0, 1.0, 1.0, 1.0)):
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=0.9,
        baseColorTexture=pyrender.Texture(source=texture, source_channels="RGB",
                                          sampler=pyrender.Sampler()))
    normals = np.tile(np.asarray(normal, np.float32), (4, 1))
    colours = np.ones((4, 4), np.float32)
    colours[:, :3] = np.asarray(shade, np.float32)[:, None]        # baked light falloff per corner
    prim = pyrender.Primitive(positions=corners.astype(np.float32), normals=normals, texcoord_0=uv.astype(np.float32),
                              color_0=colours, indices=np.array([[0, 1, 2], [0, 2, 3]], np.int32), material=material)
    return pyrender.Mesh([prim])


def room_meshes(pyrender, centre: np.ndarray, seed: int) -> list:
    """A floor at z = 0 and a back wall 1.6 m behind `centre` (x, y), both textured."""
    rng = np.random.default_rng(seed + 7919)
    cx, wall_y = float(centre[0]), float(centre[1]) + 1.6
    x0, x1, y0, height = cx - 5.0, cx + 5.0, wall_y - 12.0, 4.0
    floor = _quad(pyrender, np.array([[x0, y0, 0], [x1, y0, 0], [x1, wall_y, 0], [x0, wall_y, 0]]),
                  np.array([[0, 0], [10 / 1.6, 0], [10 / 1.6, 12 / 1.6], [0, 12 / 1.6]]), _floor_texture(rng), (0, 0, 1),
                  shade=(1.0, 1.0, 0.78, 0.78))
    wall = _quad(pyrender, np.array([[x0, wall_y, 0], [x1, wall_y, 0], [x1, wall_y, height], [x0, wall_y, height]]),
                 np.array([[0, 0], [1, 0], [1, 1], [0, 1]]), _wall_texture(rng, x1 - x0, height), (0, -1, 0),
                 shade=(0.85, 0.85, 0.95, 0.95))
    return [floor, wall]


# ------------------------------------------------------------------------------------- renderer

_RENDERER: dict = {}
_RENDER_LOCK = threading.Lock()


def _renderer(pyrender, width: int, height: int):
    """One offscreen renderer per process (an EGL context is costly); resized on demand."""
    r = _RENDERER.get("r")
    if r is None:
        try:
            r = pyrender.OffscreenRenderer(width, height)
        except Exception as e:  # the platform layer raises many types (ImportError, EGL errors, ...)
            raise MarionetteError(f"No headless OpenGL context could be created ({type(e).__name__}: {e}).",
                                  "Set PYOPENGL_PLATFORM=egl (needs libEGL + Mesa) or =osmesa "
                                  "(needs libosmesa6 and PyOpenGL>=3.1.4) before starting Python.") from e
        _RENDERER["r"] = r
    r.viewport_width, r.viewport_height = width, height
    return r


# Directional lights (direction of travel, intensity) and ambient level, shaded per vertex on the CPU.
# Why: pyrender's PBR fragment shader costs ~100 ms per 512² frame on a software GL (llvmpipe);
# its FLAT shader multiplies the texture by per-vertex colours and is about 3x cheaper.
LIGHTS = (((0.5, 1.0, -0.7), 0.62), ((-0.8, 0.6, -0.3), 0.25), ((0.0, -1.0, -0.4), 0.18))
AMBIENT = 0.30


def vertex_shading(normals: np.ndarray) -> np.ndarray:
    """Per-vertex RGBA multiplier [V, 4]: Lambert shading of LIGHTS plus AMBIENT, gamma-encoded."""
    shade = np.full(len(normals), AMBIENT, np.float32)
    for direction, intensity in LIGHTS:
        d = np.asarray(direction, np.float32)
        shade += intensity * np.clip(normals @ (-d / np.linalg.norm(d)), 0.0, None)
    gain = np.clip(shade, 0.0, 1.15) ** (1 / 2.2)
    out = np.ones((len(normals), 4), np.float32)
    out[:, :3] = gain[:, None] * np.array([1.0, 0.98, 0.95], np.float32)   # slightly warm light
    return out


def _contact_shadow(pyrender, footprint: np.ndarray):
    """A soft dark ellipse on the floor under the person (x0, y0, x1, y1 of the feet area)."""
    x0, y0, x1, y1 = footprint
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max(x1 - x0, 0.3) * 0.8, max(y1 - y0, 0.3) * 0.9
    n = 128
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    alpha = np.exp(-3.0 * (u ** 2 + v ** 2)) * 0.5
    texture = np.zeros((n, n, 4), np.uint8)
    texture[..., 3] = (alpha * 255).astype(np.uint8)
    # pyrender 0.1.45 never flags a texture as transparent, so an alpha factor just under 1 is what
    # makes it draw this quad after the opaque floor, blended.
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=[1.0, 1.0, 1.0, 0.999], alphaMode="BLEND",
        baseColorTexture=pyrender.Texture(source=texture, source_channels="RGBA", sampler=pyrender.Sampler()))
    corners = np.array([[cx - rx, cy - ry, 0.002], [cx + rx, cy - ry, 0.002], [cx + rx, cy + ry, 0.002],
                        [cx - rx, cy + ry, 0.002]], np.float32)
    prim = pyrender.Primitive(positions=corners, texcoord_0=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
                              indices=np.array([[0, 1, 2], [0, 2, 3]], np.int32), material=material)
    return pyrender.Mesh([prim])


@dataclass
class ActorScene:
    """A room plus one actor; `render(vertices)` swaps in a new body pose and draws it.

    `stage` is the person's floor footprint over the clip (x0, y0, x1, y1 in metres): the back
    wall stands 1.6 m behind its centre and a soft contact shadow lies under it.
    """
    body: BodyModel
    camera: Camera
    appearance: Appearance
    seed: int = 0
    stage: tuple = (-0.2, -0.2, 0.2, 0.2)
    _state: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        pyrender = import_pyrender()
        self._state["pyrender"] = pyrender
        self._state["mesh"] = split_mesh(self.body)
        self._state["material"] = pyrender.MetallicRoughnessMaterial(
            baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=0.75,
            baseColorTexture=pyrender.Texture(source=body_texture(self.body, self.appearance, self.seed),
                                              source_channels="RGB", sampler=pyrender.Sampler()))
        scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 1.0], ambient_light=[1.0, 1.0, 1.0])
        stage = np.asarray(self.stage, np.float64)
        for mesh in room_meshes(pyrender, (stage[:2] + stage[2:]) / 2, self.seed):
            scene.add(mesh)
        scene.add(_contact_shadow(pyrender, stage))
        scene.add(pyrender.PerspectiveCamera(yfov=self.camera.yfov, aspectRatio=self.camera.width / self.camera.height,
                                             znear=0.05, zfar=40.0), pose=self.camera.pose())
        self._state["scene"] = scene
        with _RENDER_LOCK:
            r = _renderer(pyrender, self.camera.width, self.camera.height)
            self._state["room_depth"] = r.render(scene, flags=pyrender.RenderFlags.DEPTH_ONLY)

    def render(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour [H, W, 3] uint8, depth [H, W] float32 (metres, 0 = nothing) and person mask [H, W] bool."""
        pyrender, mesh, scene = self._state["pyrender"], self._state["mesh"], self._state["scene"]
        normals = vertex_normals(vertices, self.body.faces)[mesh.vertex]
        prim = pyrender.Primitive(positions=vertices[mesh.vertex], normals=normals, texcoord_0=mesh.uv,
                                  color_0=vertex_shading(normals), indices=mesh.indices,
                                  material=self._state["material"])
        node = self._state.pop("node", None)
        if node is not None:
            scene.remove_node(node)
        self._state["node"] = scene.add(pyrender.Mesh([prim]))
        with _RENDER_LOCK:
            r = _renderer(pyrender, self.camera.width, self.camera.height)
            colour, depth = r.render(scene, flags=pyrender.RenderFlags.FLAT)
        room = self._state["room_depth"]
        mask = (depth > 0) & ((room <= 0) | (depth < room - 1e-3))
        return np.ascontiguousarray(colour[..., :3]), depth, mask


def _light_pose(direction) -> np.ndarray:
    """Pose whose -Z axis points along `direction` (pyrender lights shine down their -Z)."""
    d = np.asarray(direction, np.float64)
    z = -d / np.linalg.norm(d)
    x = np.cross([0.0, 0.0, 1.0], z)
    x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-6 else np.array([1.0, 0.0, 0.0])
    m = np.eye(4)
    m[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    return m
