"""SMPLify-X-style fitting of a body model to 2D keypoints, in torch, for any BodyModel backend.

First the global orientation of every frame is chosen for the whole clip (orientation.py): turns
about the body's vertical over a full circle are fitted to the torso and head keypoints, and one
per frame is picked for the clip with facing cues (the face seen or not, a 3D prior's facing) and a
cost on turning between frames. Then pose, shape and (SMPL-X) expression follow, with the pose
prior annealed from strong to weak, and, when 3D keypoints are given (BlazePose's world landmarks),
a term that makes each limb point towards or away from the camera as they do. Sequences are
fitted in chunks of frames: one shape shared by all frames, temporal smoothness of pose and
translation inside a chunk and across chunk borders, each chunk warm-started from the previous
chunk's last frame. Frames without a usable person are interpolated from their neighbours and
flagged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..errors import MarionetteError, NoPersonError
from ..pose.types import BODY, PoseFrame
from . import depth_prior as D
from . import fit_assembly as A
from . import fit_losses as L
from . import orientation as O
from .fit_assembly import blend_orientation as _blend_orientation  # noqa: F401  (tests use it)
from .fit_assembly import fill_missing as _fill_missing
from .fit_options import AWAY, FACING, FitOptions, default_focal, fit_options  # noqa: F401  (public here)
from .model import axis_angle_to_matrix, to_camera
from .types import BodySequence, Camera


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
            self.has_face = model.forward(model.zero_pose(1), model.default_betas()).face is not None
        if not self.has_face:
            part[L.FACE_POINTS] = 0.0              # a body without face points ignores face keypoints
        self.part = part
        self.weight = torch.from_numpy(targets.conf * part)
        self.size = torch.from_numpy(targets.person_size(0.05 * max(width, height)).astype(np.float32))
        self.face_cue = O.face_cues(targets)
        self.world_cue = O.world_facing(targets.world)
        self.world = None if targets.world is None else torch.from_numpy(targets.world.astype(np.float32))
        self.orientation = np.tile(np.asarray(FACING, np.float32), (len(targets.xy), 1))
        self.swapped = np.zeros(len(targets.xy), bool)
        swapped = L.Targets(targets.xy.copy(), targets.conf.copy(), targets.usable,
                            None if targets.world is None else targets.world.copy())
        O.swap_targets(swapped.xy, swapped.conf, swapped.world, np.arange(len(targets.xy)))
        self.xy_swapped, self.weight_swapped = torch.from_numpy(swapped.xy), torch.from_numpy(swapped.conf * part)
        self.fits_expression = model.num_expression > 0 and bool((targets.conf[:, L.FACE_POINTS] > 0).any())

    # ------------------------------------------------------------------ initial camera and pose
    def initial_pose(self, idx: np.ndarray, warm: torch.Tensor | None) -> torch.Tensor:
        """The warm-start pose (or the rest pose with bent limbs) turned to each frame's orientation
        from the clip's orientation pass."""
        pose = self.model.zero_pose(len(idx)).detach().clone().float()
        if warm is not None:
            pose[:] = warm
        else:
            pose += self.bent_limbs()
        pose[:, :3] = torch.from_numpy(self.orientation[idx])
        return pose

    def orient(self, idx: np.ndarray, betas: torch.Tensor) -> None:
        """The orientation pass over frames `idx` (clip order, see orientation.py): sets
        self.orientation[idx] and, where the keypoints are read with left and right exchanged,
        swaps them in the targets (and self.swapped)."""
        o = self.options
        pose = self.model.zero_pose(len(idx)).detach().clone().float() + self.bent_limbs()
        pose[:, :3] = torch.tensor(FACING)
        start = self.initial_translation(idx, pose, betas.detach(), None)
        with torch.no_grad():
            points = L.model_keypoints(self.model.forward(pose, betas.detach(), None))
        h, n = len(o.yaw_hypotheses), len(idx)
        kinds = (False, True) if o.swap_weight is not None else (False,)
        rot, cost = [], []
        for swapped in kinds:
            r, _, c = self.camera_stage(idx, pose[:, :3], start, start[:, 2:3].clamp(min=0.1), points,
                                        o.yaw_hypotheses, swapped)
            rot.append(r.reshape(h, n, 3))
            cost.append(c.numpy().reshape(h, n) + (o.swap_weight if swapped else 0.0))
        rot, cost = torch.cat(rot), np.concatenate(cost)
        matrices = axis_angle_to_matrix(rot).numpy().astype(np.float64)
        facing = -matrices[..., 2, 2]                         # +1: the body's front towards the camera
        unary = cost.copy()
        for k, swapped in enumerate(kinds):
            value, conf = (a[idx] for a in self.world_cue) if len(self.world_cue[0]) else self.world_cue
            rows = slice(k * h, (k + 1) * h)
            unary[rows] += O.cue_costs(facing[rows], self.face_cue[idx], (-value if swapped else value, conf),
                                       o.face_cue_weight, o.world_cue_weight)
        gaps = np.diff(np.concatenate([[idx[0] - 1], idx])).astype(np.float64)
        groups = np.repeat(np.arange(len(kinds)), h)
        path = O.best_path(unary, matrices, gaps, o.turn_weight, groups, o.swap_change_weight)
        self.orientation[idx] = rot[torch.from_numpy(path), torch.arange(n)].numpy()
        rows = idx[path >= h]
        self.swapped[rows] = True
        O.swap_targets(self.targets.xy, self.targets.conf, self.targets.world, rows)
        self.xy = torch.from_numpy(self.targets.xy)
        self.weight = torch.from_numpy(self.targets.conf * self.part)
        if self.world is not None:
            self.world = torch.from_numpy(self.targets.world.astype(np.float32))

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
        cam = to_camera(points, pose, translation)
        pixels = L.project(cam, self.focal, self.width, self.height)
        n = len(idx)
        terms = {"data": L.reprojection(pixels, self.xy[idx], weight, self.size[idx], o.sigma).sum(),
                 "pose_prior": o.pose_prior_weight * prior_scale * self.model.pose_prior(pose).sum(),
                 "shape_prior": o.shape_prior_weight * n * self.model.shape_prior(betas)}
        if expression is not None and expression.numel():
            terms["expression_prior"] = o.expression_prior_weight * n * (expression ** 2).sum()
        if self.world is not None and o.limb_depth_weight > 0:
            terms["limb_depth"] = o.limb_depth_weight * D.limb_depth(cam, self.world[idx], o.limb_depth_margin).sum()
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
        orient, shift, _ = self.camera_stage(idx, pose[:, :3], start, depth0, points, (0.0,))
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

    def camera_stage(self, idx, orient, start, depth0, points, yaws, swapped: bool = False) -> tuple[torch.Tensor, ...]:
        """Global orientation and translation offset of each frame from the torso and head keypoints,
        the body's pose held still, from each start turn in `yaws` (degrees about the body's
        vertical; a torso seen straight on is a stationary point for yaw, so gradient descent alone
        would never turn it); `swapped`: with the keypoints' left and right exchanged. Returns
        hypothesis-major rows [H·n]: orientation, offset, cost."""
        o = self.options
        n, h = len(idx), len(yaws)
        base = Rotation.from_rotvec(orient.numpy().astype(np.float64))
        turns = [(base * Rotation.from_rotvec([0.0, math.radians(y), 0.0])).as_rotvec() for y in yaws]
        rot = torch.tensor(np.concatenate(turns), dtype=torch.float32).requires_grad_(True)
        offset = torch.zeros(h * n, 3, requires_grad=True)
        part = torch.zeros(L.KEYPOINTS)
        part[list(L.TORSO)] = 1.0
        part[list(L.HEAD)] = o.camera_head_weight
        target, full = (self.xy_swapped[idx], self.weight_swapped[idx]) if swapped else (self.xy[idx], self.weight[idx])
        has_torso = (full[:, list(L.TORSO)] > 0).sum(1, keepdim=True) >= 2
        weight = torch.where(has_torso, full * part, full * (torch.arange(L.KEYPOINTS) < BODY).float())
        rows = lambda x: x.repeat(h, *([1] * (x.dim() - 1)))  # noqa: E731  (hypothesis-major rows)
        pts, st, d0, xy, w, size = rows(points), rows(start), rows(depth0), rows(target), rows(weight), \
            rows(self.size[idx])

        def per_row():
            pixels = L.project(to_camera(pts, rot, st + d0 * offset), self.focal, self.width, self.height)
            return L.reprojection(pixels, xy, w, size, o.sigma) + o.depth_weight * offset[:, 2] ** 2

        self.minimise([rot, offset], lambda: per_row().sum(), o.camera_iterations)
        with torch.no_grad():
            cost = per_row()
        return rot.detach(), offset.detach(), cost

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
    """Fits pose, shape (and SMPL-X expression when face keypoints exist) to one image's first person
    (with its 3D keypoints as depth prior where the frame has them, PoseFrame.world)."""
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
    fitter.orient(idx, model.default_betas())
    res = fitter.fit(idx, model.default_betas(), True, _zero_expression(model), fitter.fits_expression)
    if on_progress is not None:
        on_progress(1, 1)
    return _sequence(model, fitter, [res], [idx], np.ones(1, bool), res.betas, res.expression, options)


def fit_sequence(model, frames: list[PoseFrame], betas=None, options: FitOptions | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> BodySequence:
    """Fits every frame's first person. `betas` given: the shape is fixed; else one shape is fitted
    for the whole clip. Frames without a usable person are interpolated and flagged (frame_ok).
    Frames with 3D keypoints (PoseFrame.world) use them as depth prior."""
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
    fitter.orient(valid, shape)
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
    names = sorted({k for r in results for k in r.losses})
    losses = {k: sum(r.losses.get(k, 0.0) for r in results) / max(int(ok.sum()), 1) for k in names}
    info = {"losses_per_frame": losses, "loss_per_frame": sum(losses.values()),
            "focal": fitter.focal, "optimizer": options.optimizer, "interpolated": int((~ok).sum()),
            "swapped_frames": [int(i) for i in np.flatnonzero(fitter.swapped)],
            "frames": t, **options.extra}
    info.update(A.fit_report(pixels[ok], fitter.targets.subset(ok), fitter.size.numpy()[ok], np.flatnonzero(ok),
                             fitter.has_face, options.limb_error_threshold))
    info["swapped_note"] = (f"keypoints read with left and right swapped in frame(s) "
                            f"{A.frame_ranges(info['swapped_frames'])}") if info["swapped_frames"] else ""
    notes = [f"interpolated {int((~ok).sum())} frames"] if (~ok).any() else []
    notes += [n for n in (info["limbs_off_note"], info["swapped_note"]) if n]
    if notes:
        info["message"] = "; ".join(notes)
    return BodySequence(model=model.name, gender=model.gender, betas=betas.numpy(), expression=expression.numpy(),
                        pose=pose, translation=translation,
                        camera=Camera(fitter.focal, fitter.width, fitter.height), frame_ok=ok.copy(), info=info,
                        keypoints=np.concatenate([fitter.targets.xy[:, :BODY], fitter.targets.conf[:, :BODY, None]], -1))
