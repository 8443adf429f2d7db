"""Guidance maps rendered from a posed body: Champ's depth / normal / semantic / mask, a VividPose-style
dense render, and the body's own skeleton re-projected into the pose drawings.

Inputs are plain arrays in OpenCV camera space (metres; x right, y down, z forward) seen by a
`Camera` (focal in pixels, principal point at the image centre), i.e. Champ's `verts + cam_t`.
Every map is uint8 RGB [H, W, 3] with a black background:

* depth    — Champ: per-frame min-max over the body, inverted (nearest body point 255, farthest 0);
             or, with depth_range="clip", one window for the whole clip that moves with the body's
             mean depth (`clip_depth_windows`), so a hand moving forward does not re-grey the torso;
* normal   — Champ: smooth camera-space normal, OpenGL axes (x right, y up, z towards the viewer),
             (n + 1)/2 per channel, so a surface facing the camera is (128, 128, 255);
* semantic — Champ's 24 SMPL parts in its viridis palette (`SEMANTIC_PALETTE`), one exact palette
             colour per body pixel (each pixel takes its nearest triangle corner's label);
* mask     — body 255, background 0, replicated over the three channels (take channel 0 for a mask);
* dense    — our choice for VividPose's unspecified "SMPL-X rendering map": a flat grey body lit by a
             head-light (point light at the camera).

One sample per pixel centre, no anti-aliasing (Champ renders with one Cycles sample): the same input
gives the same bytes on one machine.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..body.types import Camera
from ..errors import MarionetteError
from ..pose.draw import draw_frames
from ..pose.types import PoseFrame
from . import palette
from .gl import Rasterizer, corner_vertices, linear_depth, projection_matrix

MAPS = ("depth", "normal", "semantic", "mask", "dense")
DEPTH_RANGES = ("frame", "clip")   # Champ's per-frame min-max (what it was trained on), or clip-stable
_NEEDS_COLOUR = frozenset(("normal", "semantic", "dense"))
ProgressFn = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------- checks

def _check_maps(maps) -> tuple[str, ...]:
    maps = (maps,) if isinstance(maps, str) else tuple(maps)
    unknown = [m for m in maps if m not in MAPS]
    if unknown or not maps:
        raise MarionetteError(f"Unknown guidance map(s) {unknown or list(maps)}.", f"Ask for some of {MAPS}.")
    return maps


def _check_faces(faces, num_vertices: int) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise MarionetteError(f"The mesh needs faces shaped [F, 3] with F > 0, got {faces.shape}.",
                              "Pass the body model's triangle list (model.faces).")
    if not np.issubdtype(faces.dtype, np.integer):
        raise MarionetteError(f"Mesh faces must be integer vertex indices, got {faces.dtype}.",
                              "Pass the body model's triangle list (model.faces).")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise MarionetteError(f"Mesh faces index vertices {faces.min()}..{faces.max()}, but there are "
                              f"{num_vertices} vertices.", "Use the faces of the model that made the vertices.")
    return faces.astype(np.int64)


def _check_vertices(vertices, what: str = "vertices") -> np.ndarray:
    v = np.asarray(vertices, np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise MarionetteError(f"The body {what} must be shaped [V, 3], got {v.shape}.",
                              "Pass camera-space vertices of one frame.")
    if not np.isfinite(v).all():
        raise MarionetteError(f"The body {what} contain NaN or infinite values.",
                              "Check the fit: a diverged frame gives non-finite vertices.")
    return v


def _check_labels(part_labels, num_vertices: int, maps: tuple[str, ...]) -> np.ndarray:
    if part_labels is None:
        if "semantic" in maps:
            raise MarionetteError("The semantic map needs a part label per vertex, and none was given.",
                                  "Pass the body model's part_labels, or leave 'semantic' out of maps.")
        return np.zeros(num_vertices, np.float32)
    labels = np.asarray(part_labels).reshape(-1)
    if len(labels) != num_vertices:
        raise MarionetteError(f"There are {len(labels)} part labels for {num_vertices} vertices.",
                              "Use the part_labels of the model that made the vertices.")
    if len(labels) and (labels.min() < 0 or labels.max() >= palette.NUM_PARTS):
        raise MarionetteError(f"Part labels must lie in 0..{palette.NUM_PARTS - 1}, got "
                              f"{labels.min()}..{labels.max()}.", "Use SMPL part labels (SMPL_PARTS order).")
    return labels.astype(np.float32)


def _check_camera(camera) -> None:
    if not (np.isfinite(camera.focal) and camera.focal > 0 and camera.width > 0 and camera.height > 0):
        raise MarionetteError(f"The camera (focal {camera.focal}, {camera.width}×{camera.height}) is not usable.",
                              "Give a positive focal length in pixels and a positive image size.")


# -------------------------------------------------------------------------------------------- maths

def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted smooth vertex normals [V, 3] (unit; outward for counter-clockwise faces)."""
    v = vertices
    face_normal = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n = np.zeros_like(v)
    for corner in range(3):
        for k in range(3):
            n[:, k] += np.bincount(faces[:, corner], weights=face_normal[:, k], minlength=len(v))
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)


CV_TO_GL = np.array([1.0, -1.0, -1.0])  # OpenCV camera axes → OpenGL's (a 180° turn about x)


def _clip_range(z: np.ndarray) -> tuple[float, float]:
    """Near and far planes hugging the body, so the depth buffer keeps its precision."""
    front = z[z > 1e-3]
    if len(front) == 0:
        return 0.01, 1.0  # the body is behind the camera: nothing will be drawn
    near = max(0.9 * float(front.min()), 1e-3)
    far = 1.1 * float(front.max()) + 1e-3
    return near, far


def _view_directions(mask: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """[N, 3] unit directions from each body pixel's surface point to the camera, in OpenGL camera
    axes (the same for any depth along the pixel's ray)."""
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    ray = np.stack([(cols + 0.5 - width / 2) / fx, (rows + 0.5 - height / 2) / fy, np.ones(len(rows))], axis=-1)
    ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
    return -ray * CV_TO_GL


def clip_depth_windows(verts_seq: np.ndarray) -> np.ndarray:
    """[T, 2] (near, far) per frame for clip-stable depth: centred on the frame's mean vertex depth
    (which moves with the body, not with a limb), one width for the whole clip, wide enough that no
    body point of any frame falls outside its window."""
    z = np.asarray(verts_seq, np.float64)[..., 2]
    centre = z.mean(1)
    half = max(float(np.abs(z - centre[:, None]).max()), 1e-6)
    return np.stack([centre - half, centre + half], axis=1)


def _check_depth_range(depth_range: str) -> str:
    if depth_range not in DEPTH_RANGES:
        raise MarionetteError(f"Unknown depth range '{depth_range}'.",
                              f"Use one of: {', '.join(DEPTH_RANGES)} ('frame' is Champ's per-frame min-max).")
    return depth_range


# ----------------------------------------------------------------------------------------- renderer

class GuidanceRenderer:
    """Renders guidance maps at `width`×`height`, reusing one headless GL context for every frame.

    The process keeps a single pyrender OffscreenRenderer for its GL context (see models/render/gl.py);
    close() frees this renderer's shader and framebuffer, not that context. A camera of another size is stretched to this size (its focal scaled per axis), like drawing a
    pose frame at another size. Use as a context manager, or call close().
    """

    def __init__(self, width: int, height: int):
        if int(width) <= 0 or int(height) <= 0:
            raise MarionetteError(f"Cannot render guidance at {width}×{height}.", "Give a positive width and height.")
        self.width, self.height = int(width), int(height)
        self._raster = Rasterizer(self.width, self.height)

    def close(self) -> None:
        self._raster.close()

    def __enter__(self) -> "GuidanceRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: GL may already be gone
            pass

    def render(self, vertices_cam, faces, camera: Camera, part_labels=None, maps=MAPS,
               depth_window: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        """One frame's maps: {name: uint8 [H, W, 3]} for each name in `maps` (see the module doc);
        `depth_window` (near, far) in metres replaces the per-frame min-max of the depth map."""
        maps = _check_maps(maps)
        _check_camera(camera)
        v = _check_vertices(vertices_cam)
        faces = _check_faces(faces, len(v))
        labels = _check_labels(part_labels, len(v), maps)
        return self._render(v, faces, camera, labels, maps, depth_window)

    def render_sequence(self, verts_seq, faces, camera: Camera, part_labels=None, maps=MAPS,
                        on_progress: ProgressFn | None = None, depth_range: str = "frame") -> dict[str, np.ndarray]:
        """Every frame of [T, V, 3] → {name: uint8 [T, H, W, 3]}. on_progress(done, total) runs after each
        frame; an exception it raises (a cancel) stops the loop and propagates. depth_range "frame":
        Champ's per-frame min-max; "clip": clip-stable windows (clip_depth_windows)."""
        maps = _check_maps(maps)
        depth_range = _check_depth_range(depth_range)
        _check_camera(camera)
        seq = np.asarray(verts_seq, np.float64)
        if seq.ndim != 3 or seq.shape[-1] != 3 or len(seq) == 0:
            raise MarionetteError(f"A vertex sequence must be shaped [T, V, 3] with T > 0, got {seq.shape}.",
                                  "Pass the posed vertices of every frame.")
        faces = _check_faces(faces, seq.shape[1])
        labels = _check_labels(part_labels, seq.shape[1], maps)
        out = {m: np.zeros((len(seq), self.height, self.width, 3), np.uint8) for m in maps}
        # (non-finite vertices: no windows; the frame's own check below names the frame)
        windows = clip_depth_windows(seq) if depth_range == "clip" and np.isfinite(seq).all() else None
        for t, frame in enumerate(seq):
            v = _check_vertices(frame, f"vertices of frame {t}")
            window = None if windows is None else tuple(windows[t])
            for name, image in self._render(v, faces, camera, labels, maps, window).items():
                out[name][t] = image
            if on_progress is not None:
                on_progress(t + 1, len(seq))
        return out

    def _intrinsics(self, camera: Camera) -> tuple[float, float]:
        return camera.focal * self.width / camera.width, camera.focal * self.height / camera.height

    def _render(self, v: np.ndarray, faces: np.ndarray, camera: Camera, labels: np.ndarray,
                maps: tuple[str, ...], depth_window: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        fx, fy = self._intrinsics(camera)
        near, far = _clip_range(v[:, 2])
        projection = projection_matrix(fx, fy, self.width / 2, self.height / 2, self.width, self.height, near, far)
        need_colour = bool(_NEEDS_COLOUR.intersection(maps))
        normals_gl = vertex_normals(v, faces) * CV_TO_GL if need_colour else np.zeros_like(v)
        stream = corner_vertices(v, normals_gl, faces, labels)
        window_depth, colour = self._raster.draw(stream, projection, need_colour)
        mask = window_depth < 1.0
        out = {}
        for name in maps:
            if name == "depth":
                z = linear_depth(window_depth, near, far)
                out[name] = palette.encode_depth(z, mask) if depth_window is None else \
                    palette.encode_depth_window(z, mask, *depth_window)
            elif name == "mask":
                out[name] = palette.encode_mask(mask)
            elif name == "normal":
                out[name] = palette.encode_normal(colour[..., :3], mask)
            elif name == "semantic":
                out[name] = palette.encode_semantic(np.rint(colour[..., 3]).astype(np.int64) - 1, mask)
            else:
                out[name] = palette.encode_dense(colour[..., :3], _view_directions(mask, fx, fy), mask)
        return out


# ----------------------------------------------------------------------------------------- skeleton

def _joints(points, frames: int, count: int, name: str) -> np.ndarray:
    a = np.asarray(points, np.float64)
    if a.shape != (frames, count, 3):
        raise MarionetteError(f"The {name} joints must be shaped [{frames}, {count}, 3], got {a.shape}.",
                              "Pass camera-space joints of every frame.")
    if not np.isfinite(a).all():
        raise MarionetteError(f"The {name} joints contain NaN or infinite values.",
                              "Check the fit: a diverged frame gives non-finite joints.")
    return a


def project_keypoints(points_cam: np.ndarray, camera: Camera) -> np.ndarray:
    """Camera-space points [..., 3] → OpenPose-style (x, y, score) [..., 3]: score 1 for points in front
    of the camera that land inside the image, else 0 (and xy 0, the missing-point convention)."""
    xy = camera.project(points_cam)
    seen = (points_cam[..., 2] > 1e-3) & (xy[..., 0] >= 0) & (xy[..., 0] < camera.width) & \
        (xy[..., 1] >= 0) & (xy[..., 1] < camera.height)
    out = np.zeros(points_cam.shape[:-1] + (3,), np.float32)
    out[seen, :2] = xy[seen]
    out[seen, 2] = 1.0
    return out


def skeleton_frames(body18_cam, hands_cam, face_cam, camera: Camera, style: str = "mimicmotion",
                    width: int | None = None, height: int | None = None, **options) -> np.ndarray:
    """The body's own 3D joints projected by `camera` and drawn as pose images, uint8 [T, H, W, 3].

    body18_cam [T, 18, 3] (OpenPose order), hands_cam [T, 2, 21, 3] (left, right) or None,
    face_cam [T, 68, 3] or None, all in OpenCV camera space. `style` and `options` go to
    models.pose.draw (e.g. style="mimicmotion", channel_order="stableanimator"; or "openpose").
    The image is the camera's size unless width/height stretch it.
    """
    _check_camera(camera)
    body = np.asarray(body18_cam, np.float64)
    if body.ndim != 3 or len(body) == 0:
        raise MarionetteError(f"The body joints must be shaped [T, 18, 3] with T > 0, got {body.shape}.",
                              "Pass the posed OpenPose-18 joints of every frame.")
    t = len(body)
    body = _joints(body, t, 18, "body")
    if hands_cam is not None and np.shape(hands_cam) != (t, 2, 21, 3):
        raise MarionetteError(f"The hand joints must be shaped [{t}, 2, 21, 3], got {np.shape(hands_cam)}.",
                              "Pass left and right hand joints of every frame.")
    hands = None if hands_cam is None else _joints(np.reshape(hands_cam, (t, 42, 3)), t, 42, "hand")
    face = None if face_cam is None else _joints(face_cam, t, 68, "face")
    body_kp = project_keypoints(body, camera)
    hands_kp = project_keypoints(hands, camera) if hands is not None else np.zeros((t, 42, 3), np.float32)
    face_kp = project_keypoints(face, camera) if face is not None else np.zeros((t, 68, 3), np.float32)
    frames = [PoseFrame(camera.width, camera.height, body_kp[i][None], hands_kp[i, :21][None],
                        hands_kp[i, 21:][None], face_kp[i][None]) for i in range(t)]
    return draw_frames(frames, style, width or camera.width, height or camera.height, **options)
