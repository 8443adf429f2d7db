"""Synthetic test and demo media: a driving clip and a reference image with ground-truth 2D joints.

Both are rendered from the anny body model (see actor.py / scene.py), so no human photo or video
is needed. The ground truth is anny's COCO keypoint regressor projected through the render
camera, in OpenPose-18 order (neck = mean of the shoulders), with a visibility flag per joint:
1 = inside the frame and not hidden behind the body, 0 otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MarionetteError
from ..pose.types import FACE, HAND, PoseFrame
from .actor import DRIVER, REFERENCE, Phenotype, body_model, pose_actor, procedural_motion
from .scene import ActorScene, Appearance, Camera, fit_camera

# COCO label feeding each OpenPose-18 joint; "neck" is the shoulder mean.
OPENPOSE_FROM_COCO = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                      "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                      "right_eye", "left_eye", "right_ear", "left_ear")
# Occlusion test: a keypoint is hidden when the rendered surface at its pixel lies in front of its
# own flesh by more than OCCLUSION_MARGIN. Own flesh: the bones around the joint (a raised thigh
# covering its hip does not hide the hip), plus the surface within a radius of it at rest.
FACE_POINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
FACE_RADIUS, JOINT_RADIUS, OCCLUSION_MARGIN = 0.035, 0.12, 0.02
OWN_BONES = {"shoulder": ("clavicle", "shoulder01", "upperarm01", "upperarm02", "spine01", "spine02"),
             "elbow": ("upperarm02", "lowerarm01", "lowerarm02"),
             "wrist": ("lowerarm02", "wrist", "metacarpal", "finger"),
             "hip": ("pelvis", "upperleg01", "upperleg02", "spine05", "spine04", "root"),
             "knee": ("upperleg02", "lowerleg01", "lowerleg02"),
             "ankle": ("lowerleg02", "foot", "toe"), "toe": ("foot", "toe"), "heel": ("foot", "toe"),
             "neck": ("neck01", "spine01", "clavicle")}


@dataclass
class SyntheticClip:
    """Rendered frames with ground truth. joints2d[..., 2] is visibility (1 visible, 0 not)."""
    frames: np.ndarray       # [T, H, W, 3] uint8 RGB
    joints2d: np.ndarray     # [T, 18, 3] float32: x, y in pixels, visibility
    fps: float
    masks: np.ndarray        # [T, H, W] bool: the person's silhouette
    keypoints2d: np.ndarray  # [T, 23, 3] float32: anny's COCO keypoints (feet included), same layout
    coco_labels: tuple
    camera: Camera
    phenotype: Phenotype
    appearance: Appearance
    motion: str
    keypoints3d: np.ndarray | None = None  # [T, 23, 3] the COCO keypoints in OpenCV camera space (m)

    def joints3d(self) -> np.ndarray:
        """[T, 18, 3] ground-truth OpenPose-18 joints in OpenCV camera space (x right, y down,
        z forward; metres; neck = shoulder mean)."""
        return coco_to_openpose(self.keypoints3d, self.coco_labels)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def silhouette_boxes(self) -> np.ndarray:
        """[T, 4] x0, y0, x1, y1 of each frame's person mask (pixel edges)."""
        boxes = np.zeros((self.num_frames, 4), np.float32)
        for i, m in enumerate(self.masks):
            ys, xs = np.nonzero(m)
            if len(xs):
                boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return boxes

    def pose_frames(self) -> list[PoseFrame]:
        """The ground truth as PoseFrames (one person, body only; score = visibility)."""
        w, h = self.size
        out = []
        for joints in self.joints2d:
            body = joints.copy()
            body[body[:, 2] <= 0] = 0.0
            z = lambda n: np.zeros((1, n, 3), np.float32)  # noqa: E731
            out.append(PoseFrame(w, h, body[None], z(HAND), z(HAND), z(FACE)))
        return out


def _check_size(width: int, height: int) -> None:
    if not (32 <= int(width) <= 4096 and 32 <= int(height) <= 4096):
        raise MarionetteError(f"Render size {width}x{height} is out of range.", "Use 32..4096 pixels per side.")


def coco_to_openpose(points: np.ndarray, labels: tuple) -> np.ndarray:
    """[..., 23, C] COCO-labelled points -> [..., 18, C] OpenPose order (neck = shoulder mean)."""
    index = {name: i for i, name in enumerate(labels)}
    neck = (points[..., index["left_shoulder"], :] + points[..., index["right_shoulder"], :]) / 2
    cols = [neck if name == "neck" else points[..., index[name], :] for name in OPENPOSE_FROM_COCO]
    return np.stack(cols, axis=-2)


def camera_space(camera: Camera, points: np.ndarray) -> np.ndarray:
    """World points [..., 3] → OpenCV camera space (x right, y down, z forward), float32."""
    cam = (np.asarray(points, np.float64) - camera.position) @ camera.rotation   # x right, y up, z back
    return (cam * np.array([1.0, -1.0, -1.0])).astype(np.float32)


def _own_flesh(rest_vertices: np.ndarray, rest_keypoints: np.ndarray, names: tuple) -> list[np.ndarray]:
    """Vertex ids of each keypoint's own flesh: the surface that may cover it without hiding it."""
    body = body_model()
    out = []
    for point, name in zip(rest_keypoints, names):
        radius = FACE_RADIUS if name in FACE_POINTS else JOINT_RADIUS
        own = np.linalg.norm(rest_vertices - point, axis=1) < radius
        side = {"left": "L", "right": "R"}.get(name.split("_")[0], "")
        part = name.split("_")[-1]
        if part in OWN_BONES:
            own |= body.vertex_in_bones(OWN_BONES[part], side)
        out.append(np.flatnonzero(own))
    return out


def _visibility(camera: Camera, keypoints: np.ndarray, vertices: np.ndarray, flesh: list[np.ndarray],
                zbuffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel xy [K, 2] and visibility [K] (1 = in frame and not hidden behind another body part)."""
    h, w = zbuffer.shape
    xy, depth = camera.project(keypoints)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h) & (depth > 0)
    surface = zbuffer[np.clip(xy[:, 1].astype(int), 0, h - 1), np.clip(xy[:, 0].astype(int), 0, w - 1)]
    vis = np.zeros(len(keypoints), np.float32)
    for k in np.flatnonzero(inside):
        front = depth[k]
        if len(flesh[k]):
            vxy, vdepth = camera.project(vertices[flesh[k]])
            near = np.linalg.norm(vxy - xy[k], axis=1) <= max(3.0, 0.04 * camera.focal / depth[k])
            if near.any():
                front = min(front, float(vdepth[near].min()))
        vis[k] = float(surface[k] <= 0 or surface[k] >= front - OCCLUSION_MARGIN)
    return xy, vis


def render_actor(phenotype: Phenotype, poses: list[dict], width: int, height: int, fps: float, motion: str,
                 appearance: Appearance, seed: int, fill: float, camera: Camera | None = None) -> SyntheticClip:
    """Pose the actor, frame it with a static camera, render each frame and project the ground truth."""
    _check_size(width, height)
    actor = pose_actor(phenotype, [{}] + list(poses))   # frame 0: the rest pose, for the occlusion test
    rest_vertices, rest_keypoints = actor.vertices[0], actor.keypoints[0]
    actor.vertices, actor.keypoints = actor.vertices[1:], actor.keypoints[1:]
    camera = camera or fit_camera(actor.vertices, int(width), int(height), fill=fill)
    feet = actor.vertices.reshape(-1, 3)
    feet = feet[feet[:, 2] < 0.05, :2]
    stage = (*feet.min(0), *feet.max(0))
    scene = ActorScene(body_model(), camera, appearance, seed, tuple(float(v) for v in stage))
    labels = actor.labels
    kps3d = np.concatenate([actor.keypoints, coco_to_openpose(actor.keypoints, labels)[:, 1:2]], axis=1)
    names = labels + ("neck",)
    rest_kps = np.concatenate([rest_keypoints, coco_to_openpose(rest_keypoints[None], labels)[0, 1:2]], axis=0)
    flesh = _own_flesh(rest_vertices, rest_kps, names)
    t = len(poses)
    frames = np.zeros((t, int(height), int(width), 3), np.uint8)
    masks = np.zeros((t, int(height), int(width)), bool)
    keypoints = np.zeros((t, len(names), 3), np.float32)
    for i in range(t):
        frames[i], zbuffer, masks[i] = scene.render(actor.vertices[i])
        keypoints[i, :, :2], keypoints[i, :, 2] = _visibility(camera, kps3d[i], actor.vertices[i], flesh, zbuffer)
    coco = keypoints[:, : len(labels)]
    joints = coco_to_openpose(coco, labels)
    joints[:, 1, 2] = keypoints[:, len(labels), 2]  # neck xy = 2D shoulder mean; its visibility is its own
    return SyntheticClip(frames, joints.astype(np.float32), float(fps), masks, coco.astype(np.float32), labels,
                         camera, phenotype, appearance, motion, camera_space(camera, actor.keypoints))


def render_driving_clip(frames: int = 24, width: int = 512, height: int = 512, fps: float = 12.0,
                        motion: str = "walk+wave+turn", phenotype: Phenotype = DRIVER,
                        appearance: Appearance | None = None, seed: int = 0, fill: float = 0.8) -> SyntheticClip:
    """A driving clip: the actor performs `motion` ('+'-joined: still, walk, wave, arms, turn, squat)
    in a room, seen by a static camera that keeps the whole motion in frame."""
    if not (1 <= int(frames) <= 1000):
        raise MarionetteError(f"frames={frames} is out of range.", "Use 1..1000 frames.")
    poses = procedural_motion(motion, int(frames), fps, seed)
    appearance = appearance or Appearance.sample(seed)
    return render_actor(phenotype, poses, width, height, fps, motion, appearance, seed, fill)


def render_reference(width: int = 512, height: int = 512, phenotype: Phenotype = REFERENCE,
                     appearance: Appearance | None = None, seed: int = 1, fill: float = 0.8,
                     motion: str = "still") -> SyntheticClip:
    """A reference image (T = 1): by default a different body shape from the driving actor, standing
    in a relaxed neutral pose facing the camera."""
    poses = procedural_motion(motion, 1, 1.0, seed)
    appearance = appearance or Appearance.sample(seed + 1000)
    return render_actor(phenotype, poses, width, height, 1.0, motion, appearance, seed, fill)
