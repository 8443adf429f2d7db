"""DisPose on MimicMotion: DenseMotionField, the ControlNet loader and DisPose Control Apply."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

import folder_paths

from ..models.errors import MarionetteError
from ..models.pipelines.dispose import DisPoseGuidance, keypoint_correspondence, motion_field
from .combos import MOTION_METHOD, validate
from .host import (DTYPE_CHOICES, Progress, check_interrupt, load_on_device, preview_ui, resolve_dtype, to_image_tensor,
                   unet_memory_required)
from .model_cache import cached, file_key, files_key, managed
from .model_paths import diffusers_folders, model_choices, require_model
from .tiny_models import tiny_choices
from .socket_types import DISPOSE_CONTROLNET, KEYPOINT_CORRESPONDENCE, MOTION_FIELD, SVD_CONTROL, SVDControl

TINY_CONTROLNET = "tiny random (no download, testing only)"
TINY_SD = "tiny random SD1.5 (no download, testing only)"
OFFICIAL_SD15 = "v1-5-pruned-emaonly.safetensors"


class DisPoseControlNetModel(nn.Module):
    """Container so ComfyUI's ModelPatcher can move the ControlNet (it writes `.device` on what it wraps)."""

    def __init__(self, controlnet: nn.Module, tiny: bool):
        super().__init__()
        self.controlnet, self.tiny = controlnet, tiny


def _poses(reference_pose, aligned_pose):
    from ..models.pose.keypoint_json import pose_keypoint_to_frames
    reference, driving = pose_keypoint_to_frames(reference_pose), pose_keypoint_to_frames(aligned_pose)
    if not reference or not driving:
        raise MarionetteError("DisPose needs the reference pose and at least one aligned driving pose.",
                              "Connect DWPoseExtract (reference) and PoseAlign's aligned_pose.")
    return [reference[0]] + list(driving)


def _cmp_model(choice: str):
    from ..models.dispose.cmp import CMP_SOURCE, load_cmp
    path = require_model("dispose", choice, CMP_SOURCE,
                         ", or pick the method 'fallback' (the embedded fallback, no download)")
    return cached("cmp", file_key(path), lambda: load_cmp(path))  # a ModelPatcher: ComfyUI moves CMP


class DenseMotionField:
    DESCRIPTION = ("DisPose's motion guidance from the aligned poses: the sparse field (frame-to-frame keypoint "
                   "motion, Gaussian 199 / sigma 20) and the dense field (reference -> frame), propagated over "
                   "the body by CMP as DisPose does, or by the embedded fallback (keypoint displacements "
                   "interpolated inside the person mask; no download, not what DisPose was trained with). "
                   "Keypoints missing in a frame are left out instead of pointing at the image corner.")
    CATEGORY = "Marionette/DisPose"
    FUNCTION = "build"
    RETURN_TYPES = (MOTION_FIELD, "IMAGE", "IMAGE")
    RETURN_NAMES = ("motion_field", "dense_preview", "sparse_preview")

    @classmethod
    def INPUT_TYPES(cls):
        from ..models.dispose.cmp import CMP_FILE
        return {
            "required": {
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "DWPoseExtract on the reference image."}),
                "aligned_pose": ("POSE_KEYPOINT", {"tooltip": "PoseAlign's aligned_pose (one per output frame)."}),
                "reference_image": ("IMAGE", {"tooltip": "The reference at the video size."}),
                "method": MOTION_METHOD.input("How the keypoint motion becomes the dense field."),
                "cmp_model": (model_choices("dispose", (CMP_FILE,)), {
                    "tooltip": "MOFA-Video's CMP checkpoint in models/dispose (used by the CMP method)."}),
            },
            "optional": {"person_mask": ("MASK", {"tooltip": "LoadReference's person_mask (fallback method)."})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, method=None):
        return validate(method=(MOTION_METHOD, method))

    @classmethod
    def IS_CHANGED(cls, cmp_model=None, **kwargs):
        """The CMP file's fingerprint: a file replaced under the same name makes the node run again."""
        return files_key(folder_paths.get_full_path("dispose", cmp_model or ""))

    def build(self, reference_pose, aligned_pose, reference_image, method, cmp_model, person_mask=None,
              unique_id=None):
        from ..models.dispose.flow_vis import flow_to_rgb
        if reference_image.ndim != 4 or reference_image.shape[0] != 1:
            raise MarionetteError(f"The reference image must be one frame, got shape {tuple(reference_image.shape)}.",
                                  "Connect LoadReference's image.")
        frames = _poses(reference_pose, aligned_pose)
        method = MOTION_METHOD.key(method, "method")
        cmp, report = None, None
        if method == "cmp":
            patcher = _cmp_model(cmp_model)
            load_on_device(patcher)  # CMP runs on ComfyUI's device
            cmp, progress = patcher.model, Progress(len(frames) - 1, unique_id)

            def report(done, total):
                check_interrupt()
                progress.bar.update_absolute(done, total)

        mask = None if person_mask is None else person_mask[0].float().cpu()
        field = motion_field(frames, reference_image[0].float().cpu().numpy(), method, cmp, mask, report)
        dense = field.dense
        dense_rgb, sparse_rgb = flow_to_rgb(dense), flow_to_rgb(field.sparse)
        ui = preview_ui(dense_rgb, prefix="marionette_flow")
        ui["marionette_motion"] = [{"frames": int(dense.shape[0]), "method": field.method,
                                    "max_dense_px": round(float(dense.norm(dim=1).max()), 2)}]
        return {"ui": ui, "result": (field, to_image_tensor(dense_rgb), to_image_tensor(sparse_rgb))}


class DisPoseControlNetLoader:
    DESCRIPTION = ("Loads DisPose's hybrid ControlNet (DisPose.pth, key-exact, weights only) from models/dispose, "
                   f"or '{TINY_CONTROLNET}' for the tiny test MimicMotion model (tests, MARIONETTE_TEST_MODELS=1).")
    CATEGORY = "Marionette/DisPose"
    FUNCTION = "load"
    RETURN_TYPES = (DISPOSE_CONTROLNET,)
    RETURN_NAMES = ("controlnet",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..models.dispose.controlnet import CHECKPOINT_NAME
        return {"required": {
            "controlnet": (tiny_choices(TINY_CONTROLNET) + model_choices("dispose", (CHECKPOINT_NAME,)), {
                "default": CHECKPOINT_NAME, "tooltip": "DisPose.pth in models/dispose."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto"}),
        }}

    @classmethod
    def IS_CHANGED(cls, controlnet=None, **kwargs):
        """The file's fingerprint: DisPose.pth replaced under the same name is loaded again."""
        return files_key(folder_paths.get_full_path("dispose", controlnet or ""))

    def load(self, controlnet, dtype):
        from ..models.dispose.controlnet import CHECKPOINT_SOURCE, load_dispose_controlnet
        torch_dtype = resolve_dtype(dtype)
        if controlnet == TINY_CONTROLNET:
            from ..models.dispose.tiny import tiny_dispose_controlnet
            module = tiny_dispose_controlnet().to(torch_dtype)
        else:
            path = require_model("dispose", controlnet, CHECKPOINT_SOURCE)
            module = load_dispose_controlnet(path, torch_dtype)
        container = DisPoseControlNetModel(module, tiny=controlnet == TINY_CONTROLNET)
        return (managed(container),)


class DisPoseControlApply:
    DESCRIPTION = ("Bundles DisPose's guidance for SVD Animate Sampler (MimicMotion): the ControlNet, the motion "
                   "field and, optionally, the keypoint correspondence, at a control strength (1.0 official).")
    CATEGORY = "Marionette/DisPose"
    FUNCTION = "apply"
    RETURN_TYPES = (SVD_CONTROL,)
    RETURN_NAMES = ("control",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "controlnet": (DISPOSE_CONTROLNET,),
                "motion_field": (MOTION_FIELD,),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05}),
            },
            "optional": {"keypoints": (KEYPOINT_CORRESPONDENCE, {"tooltip": "Keypoint Correspondence output."})},
        }

    def apply(self, controlnet, motion_field, strength, keypoints=None):
        if not isinstance(getattr(controlnet, "model", None), DisPoseControlNetModel):
            raise MarionetteError("The controlnet input is not a DisPose ControlNet.",
                                  "Connect DisPose ControlNet Loader.")
        container = controlnet.model
        guidance = DisPoseGuidance(container.controlnet, container.tiny, motion_field, float(strength), keypoints)
        return (SVDControl(controlnet, guidance),)


def _sd15_choices() -> list[str]:
    folders = [name for name in diffusers_folders() if "video" not in name.lower()]
    files = [f for f in folder_paths.get_filename_list("checkpoints") if "svd" not in os.path.basename(f).lower()]
    return tiny_choices(TINY_SD) + folders + [f for f in files if f != OFFICIAL_SD15] + [OFFICIAL_SD15]


class SD15Modules(nn.Module):
    """SD1.5's UNet, VAE and text encoder in one module, so ComfyUI loads and offloads them together."""

    def __init__(self, parts):
        super().__init__()
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        self.scaling_factor, self.dtype_ = parts.scaling_factor, parts.dtype

    def get_dtype(self) -> torch.dtype:
        return self.dtype_


def _sd15(choice: str, dtype: torch.dtype):
    """The SD1.5 ModelPatcher (SD15Modules), held while the file and dtype stay the same."""
    from ..models.sd15.loader import load_sd15
    from ..models.dispose.tiny import tiny_sd15
    if choice == TINY_SD:
        return cached("sd15", (choice, str(dtype)), lambda: SD15Modules(tiny_sd15(dtype=dtype)))
    path = folder_paths.get_full_path("checkpoints", choice)
    if not path:
        path = next((os.path.join(root, choice) for root in folder_paths.get_folder_paths("diffusers")
                     if os.path.isdir(os.path.join(root, choice))), None)
    if not path:
        raise MarionetteError(f"SD1.5 '{choice}' was not found in models/checkpoints or models/diffusers.",
                              f"Put {OFFICIAL_SD15} into {os.path.join(folder_paths.models_dir, 'checkpoints')} "
                              "(or the stable-diffusion-v1-5 diffusers folder into models/diffusers).")
    return cached("sd15", (file_key(path), str(dtype)), lambda: SD15Modules(load_sd15(path, dtype)))


class KeypointCorrespondence:
    DESCRIPTION = ("DisPose's keypoint correspondence: DIFT features of the reference from SD1.5 (t=261, up_blocks[1], "
                   "prompt 'photo of a human', a seeded ensemble of 8 noises) read at the 18 reference body "
                   "keypoints; DisPose's ControlNet places them at every frame's aligned keypoints.")
    CATEGORY = "Marionette/DisPose"
    FUNCTION = "build"
    RETURN_TYPES = (KEYPOINT_CORRESPONDENCE, "IMAGE")
    RETURN_NAMES = ("keypoints", "preview")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sd15": (_sd15_choices(), {"default": OFFICIAL_SD15, "tooltip": "SD1.5 single file in "
                                           "models/checkpoints or a diffusers folder in models/diffusers."}),
                "reference_image": ("IMAGE", {"tooltip": "The reference at the video size."}),
                "reference_pose": ("POSE_KEYPOINT", {"tooltip": "DWPoseExtract on the reference image."}),
                "aligned_pose": ("POSE_KEYPOINT", {"tooltip": "PoseAlign's aligned_pose."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF,
                                 "tooltip": "Noise of the DIFT ensemble (the official one is unseeded)."}),
                "ensemble": ("INT", {"default": 8, "min": 1, "max": 32}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, sd15=None, **kwargs):
        """The SD1.5 file's (or folder's) fingerprint: a replaced file makes the node run again."""
        if not sd15 or sd15 == TINY_SD:
            return ""
        folders = [os.path.join(root, sd15) for root in folder_paths.get_folder_paths("diffusers")]
        return files_key(folder_paths.get_full_path("checkpoints", sd15), *folders)

    def build(self, sd15, reference_image, reference_pose, aligned_pose, seed, ensemble):
        if reference_image.ndim != 4 or reference_image.shape[0] != 1:
            raise MarionetteError(f"The reference image must be one frame, got shape {tuple(reference_image.shape)}.",
                                  "Connect LoadReference's image.")
        height, width = int(reference_image.shape[1]), int(reference_image.shape[2])
        patcher = _sd15(sd15, resolve_dtype("auto"))
        parts = patcher.model
        load_on_device(patcher, memory_required=unet_memory_required(ensemble, height, width, parts.get_dtype(), 1.0))
        frames = _poses(reference_pose, aligned_pose)
        result = keypoint_correspondence(parts, reference_image[0], frames, seed, ensemble, tiny=sd15 == TINY_SD,
                                         check=check_interrupt)
        xy, visible = result.points.numpy(), result.visible.numpy()
        preview = correspondence_preview(reference_image[0], xy, visible)
        ui = preview_ui(preview, prefix="marionette_keypoints")
        ui["marionette_keypoints"] = [{"frames": len(frames) - 1, "reference_points": int(visible[0].sum()),
                                       "feature_channels": int(result.embeddings.shape[-1])}]
        return {"ui": ui, "result": (result, to_image_tensor(preview))}


def correspondence_preview(image: torch.Tensor, xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3]: the reference with its keypoints (dots) joined to each frame's target (rings)."""
    import cv2
    height, width = int(image.shape[0]), int(image.shape[1])
    base = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    scale = np.array([width, height])
    colours = [tuple(int(c) for c in cv2.cvtColor(np.uint8([[[k * 10, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0])
               for k in range(xy.shape[1])]
    frames = []
    for t in range(1, len(xy)):
        canvas = np.ascontiguousarray(base // 2)
        for k, colour in enumerate(colours):
            start = tuple(int(v) for v in xy[0, k] * scale)
            if visible[0, k]:
                cv2.circle(canvas, start, 3, colour, -1, cv2.LINE_AA)
            if visible[t, k]:
                end = tuple(int(v) for v in xy[t, k] * scale)
                cv2.circle(canvas, end, 4, colour, 1, cv2.LINE_AA)
                if visible[0, k]:
                    cv2.line(canvas, start, end, colour, 1, cv2.LINE_AA)
        frames.append(canvas)
    return np.stack(frames)
