"""PoseAlign: retarget driving poses onto the reference body (MimicMotion's linear fit)."""
from __future__ import annotations

import numpy as np

from ..models.errors import MarionetteError
from ..models.pose.align import apply_alignment, fit_alignment, overlay_preview
from ..models.pose.keypoint_json import frames_to_pose_keypoint, pose_keypoint_to_frames
from ..models.vision.image import to_rgb_uint8
from .host import preview_ui, to_image_tensor
from .pose import DRAW_STYLES, draw_frames


class PoseAlign:
    DESCRIPTION = ("Scales and shifts the driving poses so their body proportions and placement match the "
                   "reference person (MimicMotion's fit on nose, neck, shoulders, hips, legs, eyes, ears). "
                   "Stops with a clear message when the fit is not trustworthy.")
    CATEGORY = "Marionette/Pose"
    FUNCTION = "align"
    RETURN_TYPES = ("POSE_KEYPOINT", "IMAGE", "IMAGE")
    RETURN_NAMES = ("aligned_pose", "skeleton", "overlay")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "DWPoseExtract on the reference image."}),
                "driving_pose": ("POSE_KEYPOINT", {"tooltip": "DWPoseExtract on the driving frames."}),
                "draw_style": (list(DRAW_STYLES), {"default": "MimicMotion"}),
            },
            "optional": {"reference_image": ("IMAGE", {"tooltip": "For the overlay preview."})},
        }

    def align(self, reference_pose, driving_pose, draw_style, reference_image=None):
        refs = pose_keypoint_to_frames(reference_pose)
        driving = pose_keypoint_to_frames(driving_pose)
        if not refs or not driving:
            raise MarionetteError("PoseAlign got an empty pose list.",
                                  "Connect DWPoseExtract outputs for the reference image and the driving frames.")
        ref = refs[0]
        fit = fit_alignment(ref, driving)
        aligned = apply_alignment(fit, driving, (ref.width, ref.height))
        skeleton = draw_frames(aligned, draw_style, (ref.width, ref.height))
        if reference_image is not None:
            background = to_rgb_uint8(reference_image)[0]
        else:
            background = np.zeros((ref.height, ref.width, 3), np.uint8)
        overlay = np.stack([overlay_preview(background, ref, a, d) for a, d in zip(aligned, driving)])
        ui = preview_ui(overlay, prefix="marionette_align")
        (rw, rh), (dw, dh) = (ref.width, ref.height), (driving[fit.used_frames[0]].width,
                                                        driving[fit.used_frames[0]].height)
        ui["marionette_fit"] = [{"scale_px": [fit.ax * rw / dw, fit.ay * rh / dh], "residual_px": fit.residual,
                                 "frames": len(fit.used_frames), "keypoints": len(fit.used_ids),
                                 "summary": fit.describe()}]
        return {"ui": ui, "result": (frames_to_pose_keypoint(aligned), to_image_tensor(skeleton),
                                     to_image_tensor(overlay))}
