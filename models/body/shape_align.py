"""ShapeAlign: the driving motion on the reference person's body (Champ's / VividPose's alignment).

Every driving frame keeps its pose (global orientation + body pose) and takes the reference's shape
(betas; and SMPL-X expression, as VividPose does). The result is rendered with the reference camera
at the reference resolution. Where the body stands is chosen by `placement`:
- "reference position": the body starts where the reference person is and moves as the driving
  person moved, the motion scaled by the depth ratio so it covers the same share of the picture;
- "view transfer": Champ's `--view_transfer`: every frame at the reference's translation (the
  driving root motion is dropped, its rotation kept);
- "driving framing": the driving translations, with a focal that keeps the driving camera's field
  of view at the reference resolution (the figure sits where the driving person was).
"""
from __future__ import annotations

import numpy as np

from ..errors import MarionetteError
from .types import BodySequence, Camera

PLACEMENTS = ("reference position", "view transfer", "driving framing")


def align_shape(driving: BodySequence, reference: BodySequence, placement: str = "reference position",
                transfer_expression: bool = True) -> BodySequence:
    if reference.num_frames != 1:
        raise MarionetteError(f"The reference body has {reference.num_frames} frames; ShapeAlign needs the fit "
                              "of the single reference image.",
                              "Connect SMPLXFit run on the reference image's pose (one frame).")
    if driving.model != reference.model:
        raise MarionetteError(f"The driving body is {driving.model} but the reference body is {reference.model}.",
                              "Fit both with the same body model.")
    if placement not in PLACEMENTS:
        raise MarionetteError(f"Unknown placement '{placement}'.", f"Use one of: {', '.join(PLACEMENTS)}.")
    ref_t, drv_t = reference.translation[0], driving.translation
    camera = reference.camera
    if placement == "reference position":
        first = drv_t[int(np.argmax(driving.frame_ok))] if driving.frame_ok.any() else drv_t[0]
        scale = ref_t[2] / max(first[2], 1e-6)
        translation = ref_t[None] + (drv_t - first[None]) * scale
    elif placement == "view transfer":
        translation = np.repeat(ref_t[None], driving.num_frames, axis=0)
    else:
        translation = drv_t.copy()
        camera = Camera(driving.camera.focal * reference.camera.height / driving.camera.height,
                        reference.camera.width, reference.camera.height)
    expression = reference.expression if transfer_expression else driving.expression
    info = dict(driving.info, shape_align={"placement": placement, "transfer_expression": transfer_expression})
    return driving.with_(betas=reference.betas.copy(), expression=expression.copy(),
                         translation=translation.astype(np.float32), camera=camera,
                         gender=reference.gender, info=info)
