"""RenderGuidance: Champ's depth / normal / semantic maps, a VividPose-style dense render, the body's
own skeleton and its mask, all at the body's camera (the reference resolution after ShapeAlign)."""
from __future__ import annotations

import numpy as np

from ..models.pose.draw import DRAW_STYLES
from .body import load_model
from .combos import DRAW_STYLE, Combo, validate
from .host import Progress, preview_ui, to_image_tensor, to_mask_tensor
from .socket_types import BODY_SEQUENCE

MAPS = ("depth", "normal", "semantic", "dense", "mask")
DEPTH_RANGE = Combo(
    {"frame": "Champ's per-frame min-max (what Champ was trained on): each frame's nearest body point white, "
              "its farthest black",
     "clip": "clip-stable: one depth window for the whole clip that moves with the body, so the body keeps "
             "its grey when a limb comes forward"})


class RenderGuidance:
    DESCRIPTION = ("Renders the body sequence headless (pyrender): depth (per-frame min-max, near = white, as "
                   "Champ; or clip-stable), "
                   "camera-space normals, the 24-part SMPL semantic map in Champ's palette, a shaded dense "
                   "render, the skeleton re-projected from the 3D joints, and the body mask.")
    CATEGORY = "Marionette/Body"
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("depth", "normal", "semantic", "dense", "skeleton", "mask")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "body": (BODY_SEQUENCE,),
            "skeleton_style": DRAW_STYLE.input("Match the animation model that reads the skeleton."),
        }, "optional": {
            "depth_range": DEPTH_RANGE.input("How the depth map's greys are spread."),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def VALIDATE_INPUTS(cls, skeleton_style=None, depth_range=None):
        return validate(skeleton_style=(DRAW_STYLE, skeleton_style), depth_range=(DEPTH_RANGE, depth_range))

    def render(self, body, skeleton_style, depth_range="frame", unique_id=None):
        from ..models.body.posing import pose_sequence
        from ..models.render.guidance import GuidanceRenderer, skeleton_frames
        model = load_model(body.model, body.gender)
        posed = pose_sequence(model, body)
        cam = body.camera
        with GuidanceRenderer(cam.width, cam.height) as renderer:
            maps = renderer.render_sequence(posed.vertices, model.faces, cam, model.part_labels, maps=MAPS,
                                            on_progress=Progress(body.num_frames, unique_id),
                                            depth_range=DEPTH_RANGE.key(depth_range, "depth range"))
        renderer_name, options = DRAW_STYLES[DRAW_STYLE.key(skeleton_style, "skeleton style")]
        skeleton = skeleton_frames(posed.body18, posed.hands, posed.face, cam, style=renderer_name, **options)
        mask = maps["mask"].reshape(body.num_frames, cam.height, cam.width, -1)[..., 0] > 0
        preview = np.concatenate([maps["depth"], maps["normal"], maps["semantic"], skeleton], axis=2)
        ui = preview_ui(preview, prefix="marionette_guidance")
        return {"ui": ui, "result": tuple(to_image_tensor(maps[m]) for m in ("depth", "normal", "semantic", "dense"))
                + (to_image_tensor(skeleton), to_mask_tensor(mask.astype(np.float32)))}
