"""HJBFaceRefine: StableAnimator's inference-time face optimisation, as an option for SVD Animate Sampler."""
from __future__ import annotations

import numpy as np
import torch

import folder_paths

from ..models.errors import MarionetteError
from ..models.pipelines.svd_animation import FaceRefine
from ..models.stableanimator.hjb import REFINE_WINDOWS
from .host import load_on_device, to_mask_tensor
from .model_cache import cached, file_key, files_key
from .model_paths import model_choices, require_model
from .tiny_models import tiny_choices
from .socket_types import HJB_FACE_REFINE

TINY_FACE_MODEL = "tiny random (testing only)"
WINDOW_TOOLTIP = (
    "How SVD Animate Sampler covers the video while refining. 'single': all frames in one UNet window, as the "
    "official HJB script (tile_size = frame count; the start noise is drawn for every frame). Each UNet call then "
    "holds every frame at once, so memory and time per call grow with the frame count: long videos may not fit "
    "on the GPU. 'tiles': the sampler's tile_size/tile_overlap windows, bounded UNet memory whatever the length "
    "(overlapping frames cost extra calls), but not the official HJB result. The refinement itself decodes "
    "decode_chunk frames at a time either way.")
OFFICIAL_FACE_MODEL = ("Animation/glintr100_torch.pth",)
FACE_MODEL_SOURCE = "the 'Animation' folder of Hugging Face 'FrancisRing/StableAnimator'"


def _face_model(choice: str):
    """The R100 as a held ModelPatcher, built outside inference mode (it is differentiated through)."""
    from ..models.stableanimator.iresnet import load_iresnet100, tiny_iresnet

    def build(path=None):
        with torch.inference_mode(False):
            return tiny_iresnet() if path is None else load_iresnet100(path)

    if choice == TINY_FACE_MODEL:
        return cached("r100", (choice,), build)
    path = require_model("animation", choice, FACE_MODEL_SOURCE)
    return cached("r100", file_key(path), lambda: build(path))


def _single_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.ndim == 3:
        mask = mask[0]
    if mask.ndim != 2:
        raise MarionetteError(f"{name} must be a MASK, got shape {tuple(mask.shape)}.",
                              "Connect LoadReference's face_mask (or a loaded mask).")
    return mask.float().cpu()


def _target_masks(target_face_masks, target_pose) -> torch.Tensor:
    if target_face_masks is not None:
        masks = target_face_masks.float().cpu()
        return masks[None] if masks.ndim == 2 else masks
    if target_pose is None:
        raise MarionetteError("HJB Face Refine needs the target faces: neither target_face_masks nor target_pose "
                              "is connected.",
                              "Connect PoseAlign's aligned_pose to target_pose (face boxes from the face "
                              "landmarks), or a MASK batch with one face mask per output frame.")
    from ..models.pose.keypoint_json import pose_keypoint_to_frames
    from ..models.vision.face_detect import pose_face_mask
    frames = pose_keypoint_to_frames(target_pose)
    sizes = {(f.height, f.width) for f in frames}
    if len(sizes) != 1:
        raise MarionetteError(f"The target poses have different canvas sizes {sorted(sizes)}.",
                              "Use one POSE_KEYPOINT sequence from PoseAlign or DWPoseExtract.")
    return to_mask_tensor(np.stack([pose_face_mask(frame) for frame in frames]))


class HJBFaceRefine:
    DESCRIPTION = ("StableAnimator's HJB face optimisation for SVD Animate Sampler: at the chosen denoising steps "
                   "the predicted clean video is nudged by a few Adam iterations so that the ArcFace R100 "
                   "(glintr100_torch.pth) embedding of each frame's face crop moves towards the reference face's. "
                   "Official defaults: steps 0..20 of 25, 3 iterations, learning rate 0.1 decaying linearly. The "
                   "VAE decoder is differentiated chunk by chunk, so memory stays bounded; each refined step "
                   "costs about iterations x (a decode + its backward). Face boxes span the pixels where a mask is "
                   "full (255 in an 8-bit mask), as the official code reads its masks; soft edges do not count.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "build"
    RETURN_TYPES = (HJB_FACE_REFINE, "MASK")
    RETURN_NAMES = ("face_refine", "target_face_masks")
    OUTPUT_TOOLTIPS = ("Connect to SVD Animate Sampler's face_refine input.",
                       "The per-frame face masks whose boxes are cropped (for checking).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_model": (tiny_choices(TINY_FACE_MODEL) + model_choices("animation", OFFICIAL_FACE_MODEL), {
                    "tooltip": "StableAnimator's Animation/glintr100_torch.pth in models/animation."}),
                "reference_image": ("IMAGE", {"tooltip": "The reference image given to the sampler."}),
                "reference_face_mask": ("MASK", {"tooltip": "LoadReference's face_mask; the box of its full "
                                                            "pixels (value 1, i.e. 255) is the crop."}),
                "start_step": ("INT", {"default": 0, "min": 0, "max": 199, "tooltip": "First refined step (0-based)."}),
                "end_step": ("INT", {"default": 20, "min": 0, "max": 199,
                                     "tooltip": "Last refined step, inclusive (20 of 25 officially)."}),
                "iterations": ("INT", {"default": 3, "min": 1, "max": 50, "tooltip": "Adam iterations per step."}),
                "learning_rate": ("FLOAT", {"default": 0.1, "min": 0.001, "max": 1.0, "step": 0.001,
                                            "tooltip": "At step 0; decays as lr * (1 - step / steps)."}),
                "decode_chunk": ("INT", {"default": 4, "min": 1, "max": 64,
                                         "tooltip": "Frames decoded (with gradients) at a time; lower saves memory."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": True,
                                                       "tooltip": "Recompute decoder activations in the backward "
                                                                  "pass: less memory, ~30% slower."}),
            },
            "optional": {
                "target_face_masks": ("MASK", {"tooltip": "One face mask per output frame (e.g. StableAnimator's "
                                                          "faces/ folder); used instead of target_pose."}),
                "target_pose": ("POSE_KEYPOINT", {"tooltip": "PoseAlign's aligned_pose: face boxes from the face "
                                                             "landmarks (head keypoints when missing)."}),
                "window": (list(REFINE_WINDOWS), {"default": "single", "tooltip": WINDOW_TOOLTIP}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, face_model=None, **kwargs):
        """The R100 file's fingerprint: a file replaced under the same name makes the node run again."""
        return files_key(folder_paths.get_full_path("animation", face_model or ""))

    def build(self, face_model, reference_image, reference_face_mask, start_step, end_step, iterations,
              learning_rate, decode_chunk, gradient_checkpointing, target_face_masks=None, target_pose=None,
              window="single"):
        from ..models.stableanimator.hjb import RefineSettings, face_box, face_pixels, reference_embedding
        settings = RefineSettings(start_step=start_step, end_step=end_step, iterations=iterations,
                                  learning_rate=learning_rate, decode_chunk=decode_chunk,
                                  gradient_checkpointing=bool(gradient_checkpointing))
        if reference_image.ndim != 4 or reference_image.shape[0] != 1:
            raise MarionetteError(f"The reference image must be one frame, got shape {tuple(reference_image.shape)}.",
                                  "Connect LoadReference's image.")
        image = reference_image[0].float().cpu()
        mask = _single_mask(reference_face_mask, "reference_face_mask")
        if tuple(mask.shape) != tuple(image.shape[:2]):
            raise MarionetteError(f"The reference face mask is {mask.shape[1]}x{mask.shape[0]} but the reference "
                                  f"image is {image.shape[1]}x{image.shape[0]}.",
                                  "Use the face_mask that LoadReference made with this image.")
        box = face_box(mask)
        if box is None:
            raise MarionetteError("The reference face mask is empty (no full, 255 pixel): no face was found in "
                                  "the reference.",
                                  "Use a reference photo with a visible face (LoadReference finds it), or draw "
                                  "a face mask.")
        patcher = _face_model(face_model)
        load_on_device(patcher)
        embedder = patcher.model
        reference = reference_embedding(embedder, image, box).cpu()
        masks = _target_masks(target_face_masks, target_pose)
        if window not in REFINE_WINDOWS:
            raise MarionetteError(f"Unknown window {window!r}.", f"Pick one of: {', '.join(REFINE_WINDOWS)}.")
        full = face_pixels(masks)
        if not bool(full.any()):
            raise MarionetteError("No target frame has a face: no target face mask has a full (255) pixel.",
                                  "Check the driving video shows the face (or that the masks are not only "
                                  "soft edges), or skip HJB Face Refine.")
        spec = FaceRefine(embedder, reference, masks, settings, tiny=face_model == TINY_FACE_MODEL, window=window)
        faces = int(full.flatten(1).any(dim=1).sum())
        ui = {"marionette_face_refine": [{"frames": int(masks.shape[0]), "frames_with_face": faces,
                                          "reference_box": list(box), "tiny": spec.tiny, "window": window}]}
        return {"ui": ui, "result": (spec, masks)}
