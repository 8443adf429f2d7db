"""SMPLify-X-style fitting of a body model to 2D keypoints, in torch, for any BodyModel backend.

Per frame, the camera (translation) and global orientation are estimated first from the torso
(shoulders, neck, hips) with the person's facing (towards or away from the camera) read from the
left/right order of their shoulders and hips; then pose, shape and (SMPL-X) expression follow,
with the pose prior annealed from strong to weak. Sequences are fitted in chunks of frames: one
shape shared by all frames, temporal smoothness of pose and translation inside a chunk and across
chunk borders, each chunk warm-started from the previous chunk's last frame. Frames without a
usable person are interpolated from their neighbours and flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..errors import MarionetteError, NoPersonError
from ..pose.types import BODY, PoseFrame
from . import fit_losses as L
from .model import axis_angle_to_matrix, to_camera
from .types import BodySequence, Camera

# Default focal: a 50° field of view across the longer image side (see FitOptions.focal).
DEFAULT_FOV_DEGREES = 50.0
FACING = (math.pi, 0.0, 0.0)   # global orientation of a person facing the camera (180° about x)
AWAY = (0.0, 0.0, math.pi)     # ... of a person seen from behind (180° about z)


def default_focal(width: int, height: int) -> float:
    """Focal length (px) of a DEFAULT_FOV_DEGREES field of view across the longer image side."""
    return max(width, height) / 2 / math.tan(math.radians(DEFAULT_FOV_DEGREES) / 2)


@dataclass
class FitOptions:
    """Settings of the body fit. Loss weights are relative to the reprojection term, which sums each
    keypoint's confidence · GMoF(pixel residual²) divided by the person's 2D size² (the diagonal
    of the visible body keypoints' bbox), so it does not depend on the resolution.

    Defaults measured on the Anny renders (24-frame 512² driving clip, filmed at 40° across the
    longer side; body-joint 2D error vs ground truth, from ground-truth / BlazePose keypoints):
    - focal 50° across the longer side: 2.7 / 4.5 px; the true focal: 3.2 / 4.6 px; Champ/HMR2's
      5000/256·max(W, H) (~3° view): 9.0 / 9.8 px, a near-orthographic camera cannot reproduce the
      perspective of an ordinary lens;
    - L-BFGS (30, 70) pose iterations: 2.7 px at 0.55 s/frame; (50, 100): 2.3 px at ~0.9 s/frame;
      Adam (100, 200) at lr 0.02: 2.0 px at ~1.6 s/frame;
    - hand weight 0.1: BlazePose body 4.5 px, 74 mm MPJPE-PA; 0.5: 5.1 px (hands pull the wrists);
      0: 4.3 px but unfitted hands;
    - GMoF sigma 100 px (SMPLify-X's value): sigma 30-50 px was worse on BlazePose keypoints;
    - 20° starting bend of elbows/knees: 70 mm MPJPE-PA against 79 mm from straight limbs.
    Pose/shape prior and smoothness weights changed little between 1e-4 and 1e-3 (in the noise)."""
    focal: float | None = None           # px; None: default_focal(W, H) (50° across the longer side)
    optimizer: str = "lbfgs"             # "lbfgs" (strong-Wolfe line search) or "adam"
    lr: float | None = None              # None: 1.0 for L-BFGS, 0.02 for Adam
    camera_iterations: int = 100         # stage 1: translation + global orientation (cheap: no body model)
    pose_iterations: tuple = (30, 70)    # later stages: everything, one entry per stage
    pose_prior_anneal: tuple = (10.0, 1.0)  # pose-prior weight multiplier of each later stage
    sigma: float = 100.0                 # GMoF robustifier scale, px
    pose_prior_weight: float = 1e-3
    shape_prior_weight: float = 1e-3     # per fitted frame (the shape is shared)
    expression_prior_weight: float = 1e-3  # per fitted frame, on the squared expression coefficients
    smooth_pose_weight: float = 1e-2     # squared change per frame of the rotations (radians²)
    smooth_translation_weight: float = 1.0  # squared change per frame of translation / depth
    depth_weight: float = 1e-2           # stage 1: keeps the depth near its torso-size estimate
    camera_head_weight: float = 0.5      # stage 1: weight of nose, eyes and ears next to the torso
    limb_flexion: float = 20.0           # degrees of elbow/knee bend in the starting pose
    yaw_hypotheses: tuple = (0.0, -30.0, 30.0, -60.0, 60.0, -90.0, 90.0)  # stage 1 start turns, degrees
    hand_weight: float = 0.1             # multiplies each hand keypoint's confidence (42 points ≈ 4 body points)
    face_weight: float = 0.05            # multiplies each face keypoint's confidence (68 points ≈ 3 body points)
    min_score: float = 0.0               # keypoints scoring below this count as missing
    min_keypoints: int = 4               # fewer visible body keypoints: nobody in that frame
    chunk: int = 16                      # frames optimised together
    shape_frames: int = 8                # frames (spread over the clip) that fit the shared shape
    extra: dict = field(default_factory=dict)  # free-form notes copied into BodySequence.info

    def check(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise MarionetteError(f"Unknown optimizer '{self.optimizer}'.", "Use 'lbfgs' or 'adam'.")
        if len(self.pose_iterations) != len(self.pose_prior_anneal):
            raise MarionetteError("pose_iterations and pose_prior_anneal differ in length.",
                                  "Give one pose-prior multiplier per pose stage.")
        if self.chunk < 1 or self.shape_frames < 1 or self.min_keypoints < 2:
            raise MarionetteError("chunk and shape_frames must be >= 1 and min_keypoints >= 2.",
                                  "Use positive chunk sizes and at least 2 keypoints.")
        if self.focal is not None and not self.focal > 0:
            raise MarionetteError(f"focal={self.focal} is not a positive length.", "Use a focal in pixels > 0.")
        if not self.sigma > 0:
            raise MarionetteError(f"sigma={self.sigma} is not positive.", "Use a GMoF scale in pixels > 0.")


def fit_options(iterations: int | None = None, temporal_smoothing: float = 1.0, **changes) -> FitOptions:
    """FitOptions from a node's controls: `iterations` per stage (camera stage and each pose stage),
    `temporal_smoothing` multiplies both smoothness weights; other fields by name."""
    options = FitOptions(**changes)
    if iterations is not None:
        if int(iterations) < 1:
            raise MarionetteError(f"iterations={iterations} is not positive.", "Use at least 1 iteration per stage.")
        options.camera_iterations = int(iterations)
        options.pose_iterations = tuple(int(iterations) for _ in options.pose_iterations)
    if not float(temporal_smoothing) >= 0:
        raise MarionetteError(f"temporal_smoothing={temporal_smoothing} is negative.", "Use a weight >= 0.")
    options.smooth_pose_weight *= float(temporal_smoothing)
    options.smooth_translation_weight *= float(temporal_smoothing)
    return options


@dataclass
class _Result:
    pose: torch.Tensor          # [B, P]
    translation: torch.Tensor   # [B, 3]
    betas: torch.Tensor         # [S]
    expression: torch.Tensor    # [E]
    pixels: np.ndarray          # [B, K, 2] final reprojection
    losses: dict


class _Fitter:
    """One clip's targets, camera and loss weights; fits any subset of its frames."""

    def __init__(self, model, targets: L.Targets, width: int, height: int, options: FitOptions):
        self.model, self.targets, self.options = model, targets, options
        self.width, self.height = int(width), int(height)
        self.focal = float(options.focal or default_focal(width, height))
        self.xy = torch.from_numpy(targets.xy)
        part = np.ones(L.KEYPOINTS, np.float32)
        part[L.HANDS], part[L.FACE_POINTS] = options.hand_weight, options.face_weight
        with torch.no_grad():
            if model.forward(model.zero_pose(1), model.default_betas()).face is None:
                part[L.FACE_POINTS] = 0.0          # a body without face points ignores face keypoints
        self.weight = torch.from_numpy(targets.conf * part)
        self.size = torch.from_numpy(targets.person_size(0.05 * max(width, height)).astype(np.float32))
        self.facing = L.facing_camera(targets)
        self.fits_expression = model.num_expression > 0 and bool((targets.conf[:, L.FACE_POINTS] > 0).any())

    # ------------------------------------------------------------------ initial camera and pose
    def initial_pose(self, idx: np.ndarray, warm: torch.Tensor | None) -> torch.Tensor:
        """The rest pose (or the warm-start pose) with each frame's facing hypothesis as orientation
        wherever the warm pose faces the other way."""
        pose = self.model.zero_pose(len(idx)).detach().clone().float()
        if warm is not None:
            pose[:] = warm
        else:
            pose += self.bent_limbs()
        facing = torch.from_numpy(self.facing[idx])
        hypothesis = torch.where(facing[:, None], torch.tensor(FACING), torch.tensor(AWAY))
        if warm is None:
            pose[:, :3] = hypothesis
        else:
            warm_faces = axis_angle_to_matrix(pose[:, :3])[:, 2, 2] < 0   # body +z points at the camera
            flip = warm_faces != facing
            pose[flip, :3] = hypothesis[flip]
        return pose

    def bent_limbs(self) -> torch.Tensor:
        """[P] elbows and knees (the model's `hinges`) flexed by `options.limb_flexion`. Straight limbs
        are a stationary point for the joint above them (a thigh swung forward or back foreshortens
        alike); a bent knee makes the shin tell the two apart, so the fit finds the forward swing."""
        out = torch.zeros(self.model.pose_dim)
        for hinge in getattr(self.model, "hinges", ()):
            out[3 * hinge.slot:3 * hinge.slot + 3] = torch.tensor(hinge.axis) * math.radians(self.options.limb_flexion)
        return out

    def initial_translation(self, idx, pose, betas, expression) -> torch.Tensor:
        """Depth from the 2D vs 3D spread of the torso keypoints (all visible body points when the
        torso is not seen), x/y from their 2D centroid."""
        with torch.no_grad():
            body = L.model_keypoints(self.model.forward(pose, betas, expression))[:, :BODY]
            pts = to_camera(body, pose, torch.zeros(len(pose), 3)).numpy()
        out = np.zeros((len(idx), 3), np.float32)
        centre = np.array([self.width / 2, self.height / 2])
        for j, i in enumerate(idx):
            vis = self.targets.conf[i, :BODY] > 0
            torso = np.zeros(BODY, bool)
            torso[list(L.TORSO)] = True
            sel = vis & torso if (vis & torso).sum() >= 2 else vis
            p2, p3 = self.targets.xy[i, :BODY][sel].astype(np.float64), pts[j, sel].astype(np.float64)
            s2 = np.sqrt(((p2 - p2.mean(0)) ** 2).sum(1).mean())
            s3 = np.sqrt(((p3[:, :2] - p3[:, :2].mean(0)) ** 2).sum(1).mean())
            z = self.focal * s3 / max(s2, 1.0)
            ray = (p2.mean(0) - centre) / self.focal * z
            out[j] = (ray[0] - p3[:, 0].mean(), ray[1] - p3[:, 1].mean(), z - p3[:, 2].mean())
        return torch.from_numpy(out)

    # --------------------------------------------------------------------------------- losses
    def terms(self, idx, pose, translation, betas, expression, weight, prior_scale, previous, gaps,
              points: torch.Tensor | None = None) -> dict:
        """The weighted loss terms (and '_pixels'); `points` skips the body model when the body-space
        keypoints are already known (the camera stage, where only orientation and translation move)."""
        o = self.options
        if points is None:
            points = L.model_keypoints(self.model.forward(pose, betas, expression))
        pixels = L.project(to_camera(points, pose, translation), self.focal, self.width, self.height)
        n = len(idx)
        terms = {"data": L.reprojection(pixels, self.xy[idx], weight, self.size[idx], o.sigma).sum(),
                 "pose_prior": o.pose_prior_weight * prior_scale * self.model.pose_prior(pose).sum(),
                 "shape_prior": o.shape_prior_weight * n * self.model.shape_prior(betas)}
        if expression is not None and expression.numel():
            terms["expression_prior"] = o.expression_prior_weight * n * (expression ** 2).sum()
        if gaps is not None:
            depth = translation[:, 2].detach().mean().clamp(min=0.1)
            prev_pose, prev_t = previous if previous is not None else (None, None)
            terms["smooth_pose"] = o.smooth_pose_weight * L.smoothness(
                _rotation_features(pose), None if prev_pose is None else _rotation_features(prev_pose[None])[0], gaps)
            terms["smooth_translation"] = o.smooth_translation_weight * L.smoothness(
                translation / depth, None if prev_t is None else prev_t / depth, gaps)
        terms["_pixels"] = pixels
        return terms

    # ------------------------------------------------------------------------------- fitting
    def fit(self, idx: np.ndarray, betas: torch.Tensor, fit_betas: bool, expression: torch.Tensor,
            fit_expression: bool, warm: torch.Tensor | None = None, previous=None, temporal: bool = False) -> _Result:
        """Fits frames `idx` (in clip order). `previous` = (pose [P], translation [3], frame index)
        of the frame before the chunk, fixed, for smoothness across the chunk border."""
        o = self.options
        gaps = None
        if temporal:
            steps = np.diff(np.concatenate([[previous[2] if previous is not None else idx[0] - 1], idx]))
            gaps = torch.from_numpy(steps.astype(np.float32))
        prev = None if previous is None or not temporal else (previous[0], previous[1])
        betas = betas.detach().clone().float().requires_grad_(fit_betas)
        expr = expression.detach().clone().float().requires_grad_(fit_expression) if expression.numel() else None
        pose = self.initial_pose(idx, warm)
        start = self.initial_translation(idx, pose, betas.detach(), None if expr is None else expr.detach())
        depth0 = start[:, 2:3].clamp(min=0.1)
        with torch.no_grad():   # the body itself does not move in the camera stage
            points = L.model_keypoints(self.model.forward(pose, betas, expr))
        orient, shift = self.camera_stage(idx, pose[:, :3], start, depth0, points)
        offset = shift.clone().requires_grad_(True)       # translation = start + depth0 · offset
        pose = torch.cat([orient, pose[:, 3:]], 1).requires_grad_(True)
        params = [pose, offset] + ([betas] if fit_betas else []) + ([expr] if fit_expression else [])
        for iterations, scale in zip(o.pose_iterations, o.pose_prior_anneal):
            def loss(scale=scale):
                t = self.terms(idx, pose, start + depth0 * offset, betas, expr, self.weight[idx], scale, prev, gaps)
                return sum(v for k, v in t.items() if not k.startswith("_"))
            self.minimise(params, loss, iterations)
        with torch.no_grad():
            final = self.terms(idx, pose, start + depth0 * offset, betas, expr, self.weight[idx],
                               o.pose_prior_anneal[-1] if o.pose_prior_anneal else 1.0, prev, gaps)
        losses = {k: float(v) for k, v in final.items() if not k.startswith("_")}
        return _Result(pose.detach().clone(), (start + depth0 * offset).detach().clone(), betas.detach().clone(),
                       expression.detach().clone() if expr is None else expr.detach().clone(),
                       final["_pixels"].numpy(), losses)

    def camera_stage(self, idx, orient, start, depth0, points) -> tuple[torch.Tensor, torch.Tensor]:
        """Global orientation and translation offset of each frame from the torso and head keypoints,
        the body's pose held still. Each yaw hypothesis (a turn about the body's vertical axis) is
        optimised, and the best per frame kept: a torso seen straight on is a stationary point for
        yaw, so gradient descent alone would never turn it."""
        o = self.options
        n, h = len(idx), len(o.yaw_hypotheses)
        base = Rotation.from_rotvec(orient.numpy().astype(np.float64))
        turns = [(base * Rotation.from_rotvec([0.0, math.radians(y), 0.0])).as_rotvec() for y in o.yaw_hypotheses]
        rot = torch.tensor(np.concatenate(turns), dtype=torch.float32).requires_grad_(True)
        offset = torch.zeros(h * n, 3, requires_grad=True)
        part = torch.zeros(L.KEYPOINTS)
        part[list(L.TORSO)] = 1.0
        part[list(L.HEAD)] = o.camera_head_weight
        weight = self.weight[idx] * part
        has_torso = (self.weight[idx][:, list(L.TORSO)] > 0).sum(1, keepdim=True) >= 2
        weight = torch.where(has_torso, weight, self.weight[idx] * (torch.arange(L.KEYPOINTS) < BODY).float())
        rows = lambda x: x.repeat(h, *([1] * (x.dim() - 1)))  # noqa: E731  (hypothesis-major rows)
        pts, st, d0, xy, w, size = rows(points), rows(start), rows(depth0), rows(self.xy[idx]), rows(weight), \
            rows(self.size[idx])

        def per_row():
            pixels = L.project(to_camera(pts, rot, st + d0 * offset), self.focal, self.width, self.height)
            return L.reprojection(pixels, xy, w, size, o.sigma) + o.depth_weight * offset[:, 2] ** 2

        self.minimise([rot, offset], lambda: per_row().sum(), o.camera_iterations)
        with torch.no_grad():
            best = per_row().reshape(h, n).argmin(0) * n + torch.arange(n)
        return rot.detach()[best], offset.detach()[best]

    def minimise(self, params: list, loss_fn: Callable[[], torch.Tensor], iterations: int) -> None:
        """Runs the chosen optimiser; a step that produces non-finite values is undone."""
        if iterations <= 0:
            return
        saved = [p.detach().clone() for p in params]
        o = self.options
        if o.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(params, lr=o.lr or 1.0, max_iter=iterations, history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

            def closure():
                opt.zero_grad()
                value = loss_fn()
                value.backward()
                return value
            opt.step(closure)
        else:
            opt = torch.optim.Adam(params, lr=o.lr or 0.02)
            for _ in range(iterations):
                opt.zero_grad()
                loss_fn().backward()
                opt.step()
        if not all(torch.isfinite(p).all() for p in params):
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)


def _rotation_features(pose: torch.Tensor) -> torch.Tensor:
    """[B, 9 + P - 3]: the global orientation as a rotation matrix (free of axis-angle wrap) and the
    remaining joint rotations as they are."""
    return torch.cat([axis_angle_to_matrix(pose[:, :3]).reshape(len(pose), 9), pose[:, 3:]], 1)


# ------------------------------------------------------------------------------------ public API

def fit_reference(model, frame: PoseFrame, options: FitOptions | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> BodySequence:
    """Fits pose, shape (and SMPL-X expression when face keypoints exist) to one image's first person."""
    if not isinstance(frame, PoseFrame):
        raise MarionetteError("fit_reference needs one PoseFrame.", "Pass the reference image's pose frame.")
    options = options or FitOptions()
    options.check()
    targets = L.keypoint_targets([frame], options.min_score, options.min_keypoints)
    if not targets.usable[0]:
        raise NoPersonError("Nobody was found in the reference pose (fewer than "
                            f"{options.min_keypoints} body keypoints).",
                            "Use a reference image showing one person, or check the pose detector's output.")
    fitter = _Fitter(model, targets, frame.width, frame.height, options)
    idx = np.array([0])
    res = fitter.fit(idx, model.default_betas(), True, _zero_expression(model), fitter.fits_expression)
    if on_progress is not None:
        on_progress(1, 1)
    return _sequence(model, fitter, [res], [idx], np.ones(1, bool), res.betas, res.expression, options)


def fit_sequence(model, frames: list[PoseFrame], betas=None, options: FitOptions | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> BodySequence:
    """Fits every frame's first person. `betas` given: the shape is fixed; else one shape is fitted
    for the whole clip. Frames without a usable person are interpolated and flagged (frame_ok)."""
    options = options or FitOptions()
    options.check()
    width, height = _frame_size(frames)
    targets = L.keypoint_targets(list(frames), options.min_score, options.min_keypoints)
    if not targets.usable.any():
        raise NoPersonError(f"Nobody was found in any of the {len(frames)} frames.",
                            "Check the driving video and the pose detector's output (a person must be visible).")
    fitter = _Fitter(model, targets, width, height, options)
    valid = np.flatnonzero(targets.usable)
    total = len(frames)
    shape = _shape_tensor(model, betas)
    expression = _zero_expression(model)
    single_chunk = len(valid) <= options.chunk
    if not single_chunk and (betas is None or fitter.fits_expression):
        # One shape (and expression) for the clip, from frames spread over it.
        pick = np.unique(np.linspace(0, len(valid) - 1, min(options.shape_frames, len(valid))).round().astype(int))
        res = fitter.fit(valid[pick], shape, betas is None, expression, fitter.fits_expression)
        shape, expression = res.betas, res.expression
        if on_progress is not None:
            on_progress(0, total)
    results, chunks, previous = [], [], None
    for start in range(0, len(valid), options.chunk):
        idx = valid[start:start + options.chunk]
        fit_shape, fit_expr = single_chunk and betas is None, single_chunk and fitter.fits_expression
        res = fitter.fit(idx, shape, fit_shape, expression, fit_expr,
                         warm=None if previous is None else previous[0], previous=previous, temporal=True)
        if single_chunk:
            shape, expression = res.betas, res.expression
        results.append(res)
        chunks.append(idx)
        previous = (res.pose[-1], res.translation[-1], int(idx[-1]))
        if on_progress is not None:
            on_progress(total if start + options.chunk >= len(valid) else int(idx[-1]) + 1, total)
    return _sequence(model, fitter, results, chunks, targets.usable, shape, expression, options)


def project_keypoints(model, seq: BodySequence, chunk: int = 16) -> np.ndarray:
    """[T, K, 2] pixel positions of the fitted body, hand and face keypoints (target order:
    OpenPose body 18, left hand 21, right hand 21, face 68; the face is projected from zeros when
    the model has no face points)."""
    out = []
    betas = torch.from_numpy(seq.betas)
    expression = torch.from_numpy(seq.expression) if seq.expression.size else None
    with torch.no_grad():
        for start in range(0, seq.num_frames, chunk):
            pose = torch.from_numpy(seq.pose[start:start + chunk])
            pts = to_camera(L.model_keypoints(model.forward(pose, betas, expression)), pose,
                            torch.from_numpy(seq.translation[start:start + chunk]))
            out.append(L.project(pts, seq.camera.focal, seq.camera.width, seq.camera.height).numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------- helpers

def _frame_size(frames) -> tuple[int, int]:
    if not isinstance(frames, (list, tuple)) or not frames or not all(isinstance(f, PoseFrame) for f in frames):
        raise MarionetteError("fit_sequence needs a non-empty list of PoseFrames.",
                              "Pass the pose estimator's frames of the driving video.")
    sizes = {(int(f.width), int(f.height)) for f in frames}
    if len(sizes) != 1:
        raise MarionetteError(f"The pose frames have different canvas sizes {sorted(sizes)}.",
                              "Fit frames of one video (one resolution) at a time.")
    return sizes.pop()


def _shape_tensor(model, betas) -> torch.Tensor:
    if betas is None:
        return model.default_betas().detach().clone().float()
    b = torch.as_tensor(np.asarray(betas, np.float32)).reshape(-1)
    if b.numel() != model.num_betas:
        raise MarionetteError(f"{b.numel()} shape values given; the {model.name} body has {model.num_betas}.",
                              "Pass betas fitted with the same body model (e.g. the reference fit's betas).")
    return b


def _zero_expression(model) -> torch.Tensor:
    return torch.zeros(int(model.num_expression))


def _sequence(model, fitter: _Fitter, results: list[_Result], chunks: list[np.ndarray], ok: np.ndarray,
              betas: torch.Tensor, expression: torch.Tensor, options: FitOptions) -> BodySequence:
    """Assembles the chunks, fills the frames nobody was seen in, and reports the fit's quality."""
    t = len(ok)
    pose = np.zeros((t, model.pose_dim), np.float32)
    translation = np.zeros((t, 3), np.float32)
    pixels = np.zeros((t, L.KEYPOINTS, 2), np.float32)
    for res, idx in zip(results, chunks):
        pose[idx], translation[idx], pixels[idx] = res.pose.numpy(), res.translation.numpy(), res.pixels
    pose, translation = _fill_missing(pose, translation, ok)
    fitted = fitter.targets.subset(ok)
    names = sorted({k for r in results for k in r.losses})
    losses = {k: sum(r.losses.get(k, 0.0) for r in results) / max(int(ok.sum()), 1) for k in names}
    info = {"losses_per_frame": losses, "loss_per_frame": sum(losses.values()),
            "reprojection_px": L.mean_error_px(pixels[ok], fitted),
            "reprojection_px_hands": L.mean_error_px(pixels[ok], fitted, L.HANDS),
            "reprojection_px_face": L.mean_error_px(pixels[ok], fitted, L.FACE_POINTS),
            "focal": fitter.focal, "optimizer": options.optimizer, "interpolated": int((~ok).sum()),
            "frames": t, **options.extra}
    if (~ok).any():
        info["message"] = f"interpolated {int((~ok).sum())} frames"
    return BodySequence(model=model.name, gender=model.gender, betas=betas.numpy(), expression=expression.numpy(),
                        pose=pose, translation=translation,
                        camera=Camera(fitter.focal, fitter.width, fitter.height), frame_ok=ok.copy(), info=info)


def _fill_missing(pose: np.ndarray, translation: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames without a person: linear interpolation between the nearest fitted frames (the global
    orientation through quaternions), the nearest fitted frame at the clip's ends."""
    pose, translation = pose.copy(), translation.copy()
    good = np.flatnonzero(ok)
    for i in np.flatnonzero(~ok):
        after = good[good > i]
        before = good[good < i]
        if not len(before) or not len(after):
            j = after[0] if len(after) else before[-1]
            pose[i], translation[i] = pose[j], translation[j]
            continue
        a, b = before[-1], after[0]
        w = (i - a) / (b - a)
        pose[i] = (1 - w) * pose[a] + w * pose[b]
        pose[i, :3] = _blend_orientation(pose[a, :3], pose[b, :3], w)
        translation[i] = (1 - w) * translation[a] + w * translation[b]
    return pose, translation


def _blend_orientation(a: np.ndarray, b: np.ndarray, w: float) -> np.ndarray:
    """Normalised quaternion blend of two axis-angle rotations, returned as the axis-angle nearest `a`."""
    qa, qb = _quaternion(a), _quaternion(b)
    if np.dot(qa, qb) < 0:
        qb = -qb
    q = (1 - w) * qa + w * qb
    q /= np.linalg.norm(q)
    angle = 2 * math.atan2(np.linalg.norm(q[1:]), q[0])
    axis = q[1:] / max(np.linalg.norm(q[1:]), 1e-12)
    aa = axis * angle
    alt = aa - axis * 2 * math.pi      # the same rotation the other way round
    return (aa if np.linalg.norm(aa - a) <= np.linalg.norm(alt - a) else alt).astype(np.float32)


def _quaternion(aa: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2)], np.asarray(aa, np.float64) / angle * math.sin(angle / 2)])
