"""Stable combo values of our nodes.

Workflows and API prompts store a combo's value as text, so the values are short keys that never
change (`cmp`, `anny`, `blazepose`, ...); the explanation lives in the tooltip. The longer labels that
earlier versions saved still work: each combo maps them to their key. The server accepts them through
the nodes' VALIDATE_INPUTS (naming an input there replaces ComfyUI's own "value not in list" check for
that input, on the 2024 hosts and on 0.3.x alike), the nodes translate them when they run, and the web
extension rewrites them in the graph when a workflow is opened (it reads the map from the input's
options under LEGACY_OPTION). Model-file combos are file names and are not handled here.
"""
from __future__ import annotations

from typing import Any

from ..models.errors import MarionetteError

LEGACY_OPTION = "marionette_legacy_values"  # input option: {value saved by an earlier version: key}


class Combo:
    """A combo input with stable keys.

    options: key -> one-line explanation (shown in the tooltip, in this order).
    legacy:  value an earlier version saved -> key.
    values:  key -> what the library is called with (the key itself when absent).
    """

    def __init__(self, options: dict[str, str], legacy: dict[str, str] | None = None,
                 values: dict[str, Any] | None = None, default: str | None = None):
        self.options = dict(options)
        self.legacy = dict(legacy or {})
        self.values = dict(values or {})
        self.default = default or next(iter(self.options))
        unknown = [k for k in list(self.legacy.values()) + list(self.values) + [self.default] if k not in self.options]
        if unknown:
            raise ValueError(f"combo keys {unknown} are not among the options {list(self.options)}")
        clashes = set(self.legacy) & set(self.options)
        if clashes:
            raise ValueError(f"legacy values {sorted(clashes)} are also keys")

    @property
    def keys(self) -> list[str]:
        return list(self.options)

    def input(self, tooltip: str = "", default: str | None = None) -> tuple[list[str], dict]:
        """The INPUT_TYPES entry: keys, default, tooltip with one line per key, and the legacy map."""
        lines = [tooltip] if tooltip else []
        lines += [f"{key}: {text}" for key, text in self.options.items()]
        return self.keys, {"default": default or self.default, "tooltip": "\n".join(lines),
                           LEGACY_OPTION: dict(self.legacy)}

    def key(self, value: str, input_name: str = "value") -> str:
        """The key of a current or legacy value; a clear error for anything else."""
        if value in self.options:
            return value
        if value in self.legacy:
            return self.legacy[value]
        raise MarionetteError(f"Unknown {input_name} '{value}'.", f"Choose one of: {', '.join(self.options)}.")

    def value(self, value: str, input_name: str = "value") -> Any:
        """What the library is called with for a current or legacy value."""
        key = self.key(value, input_name)
        return self.values.get(key, key)

    def check(self, value, input_name: str = "value") -> bool | str:
        """VALIDATE_INPUTS result: True for keys, legacy values and linked inputs (None); else the error."""
        if value is None or value in self.options or value in self.legacy:
            return True
        return f"{input_name}: '{value}' is not one of {', '.join(self.options)}"


def validate(**checks: tuple[Combo, Any]) -> bool | str:
    """VALIDATE_INPUTS helper: validate(name=(COMBO, value), ...) → True or the first error."""
    for name, (combo, value) in checks.items():
        result = combo.check(value, name)
        if result is not True:
            return result
    return True


BODY_MODEL = Combo(
    {"anny": "Anny, embedded (its model data is built once on first use; no download)",
     "smplx": "SMPL-X from your licensed files in models/smplx"},
    legacy={"Anny (embedded)": "anny", "SMPL-X": "smplx"})

SHAPE_PLACEMENT = Combo(
    {"reference": "where PoseAlign puts the driving skeleton: the body's torso on the aligned torso, one depth "
                  "scale for the clip",
     "view_transfer": "Champ's view transfer: the body stays at the reference's position every frame",
     "driving": "the driving clip's own placement, seen at the reference's image size"},
    legacy={"reference position": "reference", "view transfer": "view_transfer", "driving framing": "driving"},
    values={"reference": "reference position", "view_transfer": "view transfer", "driving": "driving framing"})

POSE_BACKEND = Combo(
    {"blazepose": "embedded MediaPipe BlazePose + hand + face landmarks (bundled, no download)",
     "dwpose": "DWPose ONNX: yolox_l + dw-ll_ucoco_384 from models/dwpose (DWPose's official decoding)"},
    legacy={"embedded (BlazePose)": "blazepose", "DWPose (ONNX)": "dwpose"})

DRAW_STYLE = Combo(
    {"mimicmotion": "the confidence-weighted, dimmed drawing MimicMotion's PoseNet was trained on",
     "stableanimator": "the same drawing with StableAnimator's colour channel order",
     "openpose": "the standard OpenPose look of controlnet_aux"},
    legacy={"MimicMotion": "mimicmotion", "StableAnimator": "stableanimator", "OpenPose": "openpose"})

REFERENCE_FIT = Combo(
    {"crop": "cover and centre-crop (MimicMotion)",
     "crop_person": "centre on the person and keep the whole body (keypoints, hands, feet, head) when the "
                    "crop can hold it",
     "pad": "letterbox", "stretch": "stretch to the size", "keep_aspect": "longest side to the target"},
    legacy={"crop person": "crop_person", "keep aspect": "keep_aspect"},
    values={"crop_person": "crop person", "keep_aspect": "keep aspect"})

MOTION_METHOD = Combo(
    {"cmp": "CMP propagates the keypoint motion over the body, as DisPose does (ckpt_iter_42000.pth.tar)",
     "fallback": "embedded fallback: keypoint displacements interpolated inside the person mask (no download, "
                 "not what DisPose was trained with)"},
    legacy={"CMP (official, ckpt_iter_42000.pth.tar)": "cmp",
            "embedded fallback (keypoint interpolation in the person mask, no download)": "fallback"})

NO_FACE = Combo(
    {"error": "stop with an error",
     "zeros": "go on with a zero face embedding, as the official code (the identity is then not preserved)"},
    legacy={"zeros, as the official code": "zeros"})

ANIMATION = Combo(
    {"mimicmotion": "MimicMotion (MimicMotion_1-1.pth)",
     "stableanimator": "StableAnimator (Animation/unet.pth + pose_net.pth)"},
    legacy={"MimicMotion": "mimicmotion", "StableAnimator": "stableanimator"})

UNTRUSTED_FIT = Combo(
    {"stop": "stop the run with the reasons", "warn": "go on; the warnings show in the overlay and the status"},
    legacy={"warn only": "warn"})
