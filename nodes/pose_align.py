"""PoseAlign: retarget driving poses onto the reference body (MimicMotion's linear fit)."""
from __future__ import annotations

import numpy as np

from ..models.errors import MarionetteError
from ..models.pose.align import (TRUST_LIMITS, apply_alignment, fit_alignment, judge_alignment, overlay_preview,
                                  require_trust)
from ..models.pose.keypoint_json import frames_to_pose_keypoint, pose_keypoint_to_frames
from ..models.vision.image import to_rgb_uint8
from .host import preview_ui, to_image_tensor
from .combos import DRAW_STYLE, UNTRUSTED_FIT, validate
from .pose import draw_frames


_TRUST_TIP = ("What to do when the fit is untrustworthy. In torso lengths of the reference (neck to mid-hip): "
              "warn above {residual[0]:.2f} / stop above {residual[1]:.2f} residual, neck off by {neck[0]:.2f} / "
              "{neck[1]:.2f}, torso scaled ×{torso[0]:.2f} / ×{torso[1]:.2f}; and {off0:.0f}% / {off1:.0f}% of the "
              "aligned keypoints off the canvas. Warnings always show in the overlay and the status."
              ).format(off0=100 * TRUST_LIMITS["off_canvas"][0], off1=100 * TRUST_LIMITS["off_canvas"][1],
                       **TRUST_LIMITS)


class PoseAlign:
    DESCRIPTION = ("Scales and shifts the driving poses so their body proportions and placement match the "
                   "reference person (MimicMotion's fit on nose, neck, shoulders, hips, legs, eyes, ears). "
                   "Judges the fit against the reference's torso (residual, neck placement, torso scale, "
                   "keypoints off the canvas): doubtful fits are named in the overlay and the status, "
                   "untrustworthy ones stop the run unless untrusted_fit is \"warn\".")
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
                "draw_style": DRAW_STYLE.input("Match the animation model that reads the skeleton."),
            },
            "optional": {"reference_image": ("IMAGE", {"tooltip": "For the overlay preview."}),
                         "untrusted_fit": UNTRUSTED_FIT.input(_TRUST_TIP)},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, draw_style=None, untrusted_fit=None):
        return validate(draw_style=(DRAW_STYLE, draw_style), untrusted_fit=(UNTRUSTED_FIT, untrusted_fit))

    def align(self, reference_pose, driving_pose, draw_style, reference_image=None, untrusted_fit="stop"):
        refs = pose_keypoint_to_frames(reference_pose)
        driving = pose_keypoint_to_frames(driving_pose)
        if not refs or not driving:
            raise MarionetteError("PoseAlign got an empty pose list.",
                                  "Connect DWPoseExtract outputs for the reference image and the driving frames.")
        untrusted_fit = UNTRUSTED_FIT.key(untrusted_fit, "untrusted_fit")
        ref = refs[0]
        fit = fit_alignment(ref, driving)
        aligned = apply_alignment(fit, driving, (ref.width, ref.height))
        trust = judge_alignment(fit, ref, aligned)
        if untrusted_fit == "stop":
            require_trust(trust)
        skeleton = draw_frames(aligned, draw_style, (ref.width, ref.height))
        if reference_image is not None:
            background = to_rgb_uint8(reference_image)[0]
        else:
            background = np.zeros((ref.height, ref.width, 3), np.uint8)
        overlay = np.stack([overlay_preview(background, ref, a, d, trust=trust) for a, d in zip(aligned, driving)])
        ui = preview_ui(overlay, prefix="marionette_align")
        (rw, rh), (dw, dh) = (ref.width, ref.height), (driving[fit.used_frames[0]].width,
                                                        driving[fit.used_frames[0]].height)
        ui["marionette_fit"] = [{"scale_px": [fit.ax * rw / dw, fit.ay * rh / dh], "residual_px": fit.residual,
                                 "frames": len(fit.used_frames), "keypoints": len(fit.used_ids),
                                 "summary": fit.describe(), "trust": trust.level,
                                 "residual_torso": trust.residual, "neck_torso": _finite(trust.neck),
                                 "torso_scale": _finite(trust.torso), "off_canvas": trust.off_canvas,
                                 "warnings": list(trust.reasons), "trust_summary": trust.describe()}]
        return {"ui": ui, "result": (frames_to_pose_keypoint(aligned), to_image_tensor(skeleton),
                                     to_image_tensor(overlay))}


def _finite(value: float):
    """JSON has no NaN: None where a measure could not be taken."""
    return float(value) if np.isfinite(value) else None
