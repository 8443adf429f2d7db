"""ShapeAlign: the driving motion on the reference person's body (Champ's / VividPose's alignment).

Every driving frame keeps its pose (global orientation + body pose) and takes the reference's shape
(betas; and SMPL-X expression, as VividPose does). The result is rendered with the reference camera
at the reference resolution. Where the body stands is chosen by `placement`:
- "reference position": where PoseAlign puts the driving skeleton. PoseAlign maps the driving
  keypoints onto the reference body with one scale and offset for the clip (MimicMotion's linear
  fit); the same fit, made from the keypoints both bodies were fitted to, places each frame's body
  so that its torso (neck, shoulders, hips) projects onto the aligned driving torso: one depth
  scale for the clip (the driving depth times the ratio that makes the torso as large as the
  aligned one), the torso centre per frame. The placed body and the aligned 2D skeleton agree in
  anchor and scale, so guidance maps and skeleton drawings line up;
- "view transfer": Champ's `--view_transfer`: every frame at the reference's translation (the
  driving root motion is dropped, its rotation kept);
- "driving framing": the driving translations, with a focal that keeps the driving camera's field
  of view at the reference resolution (the figure sits where the driving person was).
"""
from __future__ import annotations

import numpy as np

from ..errors import MarionetteError
from ..pose.align import fit_alignment
from ..pose.types import BODY, FACE, HAND, PoseFrame
from .types import BodySequence, Camera

PLACEMENTS = ("reference position", "view transfer", "driving framing")
TORSO = (1, 2, 5, 8, 11)   # OpenPose neck, shoulders, hips: the anchor of "reference position"


def align_shape(driving: BodySequence, reference: BodySequence, placement: str = "reference position",
                transfer_expression: bool = True, model=None) -> BodySequence:
    """The driving motion with the reference's shape, placed by `placement`; "reference position"
    needs the body `model` both were fitted with."""
    if reference.num_frames != 1:
        raise MarionetteError(f"The reference body has {reference.num_frames} frames; ShapeAlign needs the fit "
                              "of the single reference image.",
                              "Connect SMPLXFit run on the reference image's pose (one frame).")
    if driving.model != reference.model:
        raise MarionetteError(f"The driving body is {driving.model} but the reference body is {reference.model}.",
                              "Fit both with the same body model.")
    if placement not in PLACEMENTS:
        raise MarionetteError(f"Unknown placement '{placement}'.", f"Use one of: {', '.join(PLACEMENTS)}.")
    expression = reference.expression if transfer_expression else driving.expression
    shaped = driving.with_(betas=reference.betas.copy(), expression=expression.copy(), gender=reference.gender)
    camera, note = reference.camera, {}
    if placement == "reference position":
        if model is None:
            raise MarionetteError("ShapeAlign's 'reference position' needs the body model.",
                                  "Pass the body model both bodies were fitted with (model=...).")
        translation, note = _reference_position(model, driving, reference, shaped)
    elif placement == "view transfer":
        translation = np.repeat(reference.translation[:1], driving.num_frames, axis=0)
    else:
        translation = driving.translation.copy()
        camera = Camera(driving.camera.focal * reference.camera.height / driving.camera.height,
                        reference.camera.width, reference.camera.height)
    info = dict(driving.info, shape_align={"placement": placement, "transfer_expression": transfer_expression,
                                           **note})
    return shaped.with_(translation=translation.astype(np.float32), camera=camera, info=info)


def _keypoints(model, seq: BodySequence) -> np.ndarray:
    """[T, 18, 3] the 2D body keypoints the sequence was fitted to, or its own projected joints."""
    if seq.keypoints is not None:
        return seq.keypoints
    from .posing import pose_sequence
    joints = pose_sequence(model, seq).body18
    out = np.ones(joints.shape[:2] + (3,), np.float32)
    out[..., :2] = seq.camera.project(joints)
    return out


def _frames(keypoints: np.ndarray, camera: Camera, ok: np.ndarray) -> list[PoseFrame]:
    """One-person PoseFrames (nobody in frames not ok) for PoseAlign's fit."""
    zero = lambda n: np.zeros((1, n, 3), np.float32)  # noqa: E731
    return [PoseFrame(camera.width, camera.height, k[None] if good else np.zeros((0, BODY, 3)),
                      zero(HAND) if good else np.zeros((0, HAND, 3)), zero(HAND) if good else np.zeros((0, HAND, 3)),
                      zero(FACE) if good else np.zeros((0, FACE, 3))) for k, good in zip(keypoints, ok)]


def _posed_torso(model, seq: BodySequence, translation: np.ndarray) -> np.ndarray:
    """[T, 5, 3] camera-space torso joints of `seq` posed with `translation`."""
    from .posing import pose_sequence
    return pose_sequence(model, seq.with_(translation=translation.astype(np.float32))).body18[:, list(TORSO)]


def _reference_position(model, driving: BodySequence, reference: BodySequence, shaped: BodySequence):
    ref_cam, drv_cam = reference.camera, driving.camera
    ref_kp, drv_kp = _keypoints(model, reference)[0], _keypoints(model, driving)
    ref_frame = _frames(ref_kp[None], ref_cam, np.ones(1, bool))[0]
    fit = fit_alignment(ref_frame, _frames(drv_kp, drv_cam, driving.frame_ok))
    # PoseAlign in pixels: aligned = scale · driving px + shift (one scale: the fit keeps the aspect)
    scale = fit.ay * ref_cam.height / drv_cam.height
    shift = np.array([fit.bx * ref_cam.width, fit.by * ref_cam.height])
    # The driving body's own torso, projected and aligned: smooth, and present in every frame.
    drv_torso = _posed_torso(model, driving, driving.translation)
    target = scale * drv_cam.project(drv_torso) + shift                                  # [T, 5, 2]
    body = _posed_torso(model, shaped, np.zeros_like(driving.translation))              # rotated, root at 0
    spread = lambda p: np.sqrt(((p - p.mean(1, keepdims=True)) ** 2).sum(-1).mean(1))   # noqa: E731
    # One depth ratio for the clip: the placed torso as large as the aligned one (median over frames).
    drv_depth = drv_torso[..., 2].mean(1)
    ratio = ref_cam.focal * spread(body[..., :2]) / np.maximum(spread(target) * drv_depth, 1e-9)
    depth_ratio = float(np.median(ratio[driving.frame_ok] if driving.frame_ok.any() else ratio))
    translation = np.zeros_like(driving.translation, dtype=np.float64)
    centre = np.array([ref_cam.width / 2, ref_cam.height / 2])
    for t in range(driving.num_frames):   # the torso centre onto the aligned torso centre
        z = depth_ratio * drv_depth[t]
        translation[t, 2] = z - body[t, :, 2].mean()
        translation[t, :2] = (target[t].mean(0) - centre) / ref_cam.focal * z - body[t, :, :2].mean(0)
    placed = ref_cam.project(_posed_torso(model, shaped, translation))
    aligned_kp = scale * drv_kp[..., :2] + shift
    seen = (drv_kp[:, list(TORSO), 2] > 0) & driving.frame_ok[:, None]
    gap = np.linalg.norm(placed - aligned_kp[:, list(TORSO)], axis=-1)
    note = {"alignment": {"ax": fit.ax, "ay": fit.ay, "bx": fit.bx, "by": fit.by}, "depth_ratio": depth_ratio,
            "torso_to_aligned_px": float(gap[seen].mean()) if seen.any() else float("nan"),
            "torso_to_aligned_px_max": float(gap[seen].max()) if seen.any() else float("nan")}
    return translation, note
