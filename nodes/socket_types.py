"""Socket type names of the data only our nodes make and read.

ComfyUI's type names are global across every installed pack: a generic name (BBOX, MOTION_FIELD) is
also used by other packs with other Python objects, and the UI would let those be connected to ours.
So our own types carry the MARIONETTE_ prefix. POSE_KEYPOINT stays comfyui_controlnet_aux's type on
purpose (same format, so poses flow both ways); IMAGE, MASK and LATENT are ComfyUI's.

Earlier versions named these without the prefix. API prompts hold no type names, so they run as they
are; workflows saved with the old names get their socket types from these definitions when they are
opened (web/js/marionette.js) and the shipped ones are rewritten by tests/harness/migrate_workflows.py.
Most values are library types; `SVDControl` is the one that also holds a ComfyUI object.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.pipelines.dispose import DisPoseGuidance

BODY_SEQUENCE = "MARIONETTE_BODY_SEQUENCE"          # models.body.types.BodySequence
FACE_BOX = "MARIONETTE_BBOX"                        # per image: [x0, y0, x1, y1] in pixels, or None
MOTION_FIELD = "MARIONETTE_MOTION_FIELD"            # models.pipelines.dispose.MotionField
KEYPOINT_CORRESPONDENCE = "MARIONETTE_KEYPOINT_CORRESPONDENCE"  # models.pipelines.dispose.Correspondence
DISPOSE_CONTROLNET = "MARIONETTE_DISPOSE_CONTROLNET"  # ModelPatcher of DisPose's ControlNet
SVD_CONTROL = "MARIONETTE_SVD_CONTROL"              # SVDControl below
SVD_ANIMATION_MODEL = "MARIONETTE_SVD_ANIMATION_MODEL"  # ModelPatcher of an SVDAnimation
HJB_FACE_REFINE = "MARIONETTE_HJB_FACE_REFINE"      # models.pipelines.svd_animation.FaceRefine
SD15_ANIMATION_MODEL = "MARIONETTE_SD15_ANIMATION_MODEL"  # ModelPatcher of a pipelines.sd15_animation.SD15Animation


@dataclass
class SVDControl:
    """SVD_CONTROL: DisPose's guidance for SVD Animate Sampler, with the ModelPatcher that holds its
    ControlNet so the sampler can let ComfyUI load it next to the UNet."""
    patcher: object
    guidance: DisPoseGuidance
