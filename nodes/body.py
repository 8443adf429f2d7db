"""SMPLXFit and ShapeAlign: a 3D body fitted to 2D keypoints, then given the reference's shape."""
from __future__ import annotations

import numpy as np
import torch

from ..models.body.shape_align import align_shape
from ..models.errors import MarionetteError
from ..models.pose.keypoint_json import pose_keypoint_to_frames
from ..models.vision.image import to_rgb_uint8
from .anny_setup import prepare_anny
from .combos import BODY_MODEL, SHAPE_PLACEMENT, validate
from .host import Progress, preview_ui, to_image_tensor
from .model_cache import file_key, files_key, on_release
from .model_paths import smplx_dir
from .socket_types import BODY_SEQUENCE

GENDERS = ("neutral", "female", "male")
_models: dict = {}


def _release_body_models() -> None:
    from ..models.body.loading import release_body_models
    _models.clear()
    release_body_models()


on_release(_release_body_models)  # ComfyUI's "Unload models" / free memory drops the body models too


def load_model(kind: str, gender: str = "neutral"):
    """The body model of a node choice or of a BodySequence's `model` name, loaded once.

    ComfyUI runs nodes under torch.inference_mode; tensors made there can never join an autograd
    graph, so the model (which SMPLXFit differentiates through) is built outside it.
    """
    from ..models.body.loading import load_body_model
    name = BODY_MODEL.key(kind, "body model")  # the node's choice (also as saved by earlier versions)
    folder = smplx_dir(gender) if name == "smplx" else None
    # SMPL-X: keyed by its files' (path, mtime, size), so a replaced file is loaded again
    key = ("anny", "neutral") if name == "anny" else ("smplx", gender, file_key(folder))
    if key not in _models:
        for stale in [k for k in _models if k[:2] == key[:2]]:
            del _models[stale]
        if key[0] == "anny":
            prepare_anny()  # first use: anny's data is built with the node's progress bar and Cancel
        with torch.inference_mode(False):
            _models[key] = load_body_model(key[0], folder, key[1])
    return _models[key]


def overlay_frames(model, body, images) -> np.ndarray:
    """The fitted body (shaded) and its skeleton blended over the frames it was fitted to."""
    from ..models.body.posing import pose_sequence
    from ..models.render.guidance import GuidanceRenderer, skeleton_frames
    posed = pose_sequence(model, body)
    cam = body.camera
    with GuidanceRenderer(cam.width, cam.height) as renderer:
        maps = renderer.render_sequence(posed.vertices, model.faces, cam, None, maps=("dense", "mask"))
    skeleton = skeleton_frames(posed.body18, posed.hands, None, cam)
    frames = images.astype(np.float32)
    alpha = (maps["mask"].reshape(frames.shape[:3] + (-1,))[..., :1] > 0) * 0.6
    out = frames * (1 - alpha) + maps["dense"].astype(np.float32) * alpha
    out = np.where(skeleton.max(-1, keepdims=True) > 0, skeleton, out)
    return np.clip(out, 0, 255).astype(np.uint8)


def fit_status(body) -> dict:
    """The status line's facts: reprojection error in px and as a share of the body's size, per part,
    and the frames the fit should not be trusted on."""
    info = body.info
    return {"frames": body.num_frames, "model": body.model, "interpolated": int((~body.frame_ok).sum()),
            "reprojection_px": float(info.get("reprojection_px", float("nan"))),
            "reprojection_relative": float(info.get("reprojection_relative", float("nan"))),
            "parts": {k: round(100 * v["relative"], 1) for k, v in info.get("reprojection_parts", {}).items()},
            "frames_limbs_off": list(info.get("frames_limbs_off", [])),
            "warning": "; ".join(n for n in (info.get("limbs_off_note"), info.get("swapped_note")) if n)}


class SMPLXFit:
    DESCRIPTION = ("Fits a 3D body (Anny, embedded; or SMPL-X from your licensed files) to the 2D keypoints of "
                   "every frame: camera, global orientation, pose and one body shape for the sequence, with "
                   "temporal smoothness. Frames without a person are interpolated and reported.")
    CATEGORY = "Marionette/Body"
    FUNCTION = "fit"
    RETURN_TYPES = (BODY_SEQUENCE, "IMAGE")
    RETURN_NAMES = ("body", "overlay")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "DWPoseExtract output (reference or driving)."}),
                "body_model": BODY_MODEL.input(),
                "gender": (list(GENDERS), {"default": "neutral", "tooltip": "Which SMPL-X file to use."}),
                "iterations": ("INT", {"default": 50, "min": 10, "max": 2000, "step": 10,
                                       "tooltip": "Optimiser steps per stage; more is slower and tighter."}),
                "temporal_smoothing": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1,
                                                 "tooltip": "Weight of the frame-to-frame smoothness term."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "The frames the keypoints came from, for the overlay preview."}),
                "shape_from": (BODY_SEQUENCE, {"tooltip": "Reuse this body shape and fit only the pose."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, body_model=None):
        return validate(body_model=(BODY_MODEL, body_model))

    @classmethod
    def IS_CHANGED(cls, body_model=None, gender="neutral", **kwargs):
        """SMPL-X: the files' fingerprint, so a replaced SMPLX_*.npz makes the node run again."""
        try:
            return files_key(smplx_dir(gender)) if BODY_MODEL.key(body_model, "body model") == "smplx" else ""
        except MarionetteError:  # unknown choice or missing file: the node itself reports it
            return ""

    def fit(self, pose_keypoint, body_model, gender, iterations, temporal_smoothing, images=None,
            shape_from=None, unique_id=None):
        from ..models.body.fit import fit_options, fit_reference, fit_sequence
        frames = pose_keypoint_to_frames(pose_keypoint)
        if not frames:
            raise MarionetteError("SMPLXFit got no pose frames.", "Connect DWPoseExtract's pose_keypoint output.")
        pictures = None
        if images is not None:
            pictures = to_rgb_uint8(images)
            if len(pictures) != len(frames):
                raise MarionetteError(f"SMPLXFit got {len(pictures)} images but {len(frames)} pose frames.",
                                      "Connect the same frames to DWPoseExtract and to SMPLXFit's images input.")
        model = load_model(body_model, gender)
        options = fit_options(iterations=iterations, temporal_smoothing=temporal_smoothing)
        progress = Progress(len(frames), unique_id)
        with torch.inference_mode(False), torch.enable_grad():  # the fit is an optimisation
            if shape_from is None and len(frames) == 1:
                body = fit_reference(model, frames[0], options, on_progress=progress)
            else:
                betas = None if shape_from is None else shape_from.betas
                body = fit_sequence(model, frames, betas=betas, options=options, on_progress=progress)
        ui = {"marionette_body": [fit_status(body)]}
        if pictures is None:  # the overlay then shows the body alone, at the keypoints' canvas size
            pictures = np.zeros((len(frames), frames[0].height, frames[0].width, 3), np.uint8)
        overlay = overlay_frames(model, body, pictures)
        ui.update(preview_ui(overlay, prefix="marionette_fit"))
        return {"ui": ui, "result": (body, to_image_tensor(overlay))}


class ShapeAlign:
    DESCRIPTION = ("Puts the driving motion on the reference person's body: the driving poses with the "
                   "reference's shape (and SMPL-X expression), placed at the reference position, at the "
                   "reference camera (Champ's view transfer), or in the driving framing.")
    CATEGORY = "Marionette/Body"
    FUNCTION = "align"
    RETURN_TYPES = (BODY_SEQUENCE,)
    RETURN_NAMES = ("body",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "driving_body": (BODY_SEQUENCE,),
            "reference_body": (BODY_SEQUENCE,),
            "placement": SHAPE_PLACEMENT.input("Where the body stands in the reference picture."),
            "transfer_expression": ("BOOLEAN", {"default": True, "tooltip": "SMPL-X: use the reference's "
                                                "facial expression (VividPose)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, placement=None):
        return validate(placement=(SHAPE_PLACEMENT, placement))

    def align(self, driving_body, reference_body, placement, transfer_expression):
        placement = SHAPE_PLACEMENT.value(placement, "placement")
        model = load_model(driving_body.model, driving_body.gender) if placement == "reference position" else None
        return (align_shape(driving_body, reference_body, placement, transfer_expression, model),)
