"""SVDAnimationLoader and SVDAnimateSampler: MimicMotion / StableAnimator video generation on SVD-xt."""
from __future__ import annotations

import os

import numpy as np
import torch

import comfy.model_management as mm
import folder_paths

from ..models.errors import MarionetteError
from ..models.pipelines.svd_animation import DECODE_CHUNKS, SVDAnimation, animate_svd
from .combos import ANIMATION, validate
from .host import (DTYPE_CHOICES, FACE_TOKENS_KEY, Progress, check_interrupt, load_on_device, preview_ui, resolve_dtype,
                   unet_memory_required)
from .model_cache import files_key, managed, patcher_for
from .model_paths import ANIMATION_SOURCES, FOLDERS, diffusers_folders, model_choices, require_model
from .tiny_models import tiny_choices
from .socket_types import HJB_FACE_REFINE, SVD_ANIMATION_MODEL, SVD_CONTROL

TINY_CHOICE = "tiny random (no download, testing only)"
OFFICIAL_SVD = "stable-video-diffusion-img2vid-xt"  # the diffusers folder the official scripts load
OFFICIAL_CHECKPOINTS = ("MimicMotion_1-1.pth", "Animation/unet.pth")
STABLEANIMATOR_POSE_NET = "pose_net.pth"  # read from the folder of StableAnimator's unet.pth
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt")
NOISE_DEVICES = ("model", "cpu")
TINY_WARNING = ("untrained tiny model: the frames are noise, not an animation. Put the real weights in "
                "place: the SVD-xt diffusers folder (stable-video-diffusion-img2vid-xt) in {diffusers} and "
                "MimicMotion_1-1.pth or StableAnimator's Animation/unet.pth + pose_net.pth in {animation}, "
                "then pick them in SVD Animation Loader.")


def _svd_single_files() -> list[str]:
    """ComfyUI's single-file SVD checkpoints (svd_xt.safetensors, ...) in models/checkpoints."""
    return sorted(f for f in folder_paths.get_filename_list("checkpoints")
                  if "svd" in os.path.basename(f).lower() and f.lower().endswith(SINGLE_FILE_SUFFIXES))


def _svd_folder_path(name: str) -> str:
    for root in folder_paths.get_folder_paths("diffusers"):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    default = os.path.join(folder_paths.models_dir, "diffusers")
    raise MarionetteError(f"The SVD-xt folder '{name}' was not found in the 'diffusers' model folders.",
                          f"Put the stable-video-diffusion-img2vid-xt diffusers folder into {default} (or ComfyUI's "
                          "svd_xt.safetensors into models/checkpoints).")


def _checkpoint_path(name: str, animation: str) -> str:
    return require_model("animation", name, ANIMATION_SOURCES[animation])


def _pose_net_path(unet_path: str, checkpoint: str) -> str:
    path = os.path.join(os.path.dirname(unet_path), STABLEANIMATOR_POSE_NET)
    if os.path.isfile(path):
        return path
    raise MarionetteError(
        f"StableAnimator's {STABLEANIMATOR_POSE_NET} was not found next to {checkpoint} "
        f"(looked for {path}).",
        f"Put {STABLEANIMATOR_POSE_NET} from {ANIMATION_SOURCES['stableanimator']} into {os.path.dirname(unet_path)}.")


class SVDAnimationLoader:
    DESCRIPTION = ("Loads MimicMotion or StableAnimator on SVD-xt: the SVD-xt diffusers folder (VAE, CLIP image "
                   "encoder) from models/diffusers and the animation checkpoint from models/animation. "
                   f"Tests and the demo (with MARIONETTE_TEST_MODELS=1) can pick '{TINY_CHOICE}', a small "
                   "untrained model whose frames are noise.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "load"
    RETURN_TYPES = (SVD_ANIMATION_MODEL,)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "svd_folder": (tiny_choices(TINY_CHOICE) + [OFFICIAL_SVD] + [
                    f for f in diffusers_folders() + _svd_single_files() if f != OFFICIAL_SVD], {
                "tooltip": "SVD-xt: the stable-video-diffusion-img2vid-xt (or -1-1) diffusers folder in "
                           "models/diffusers, or ComfyUI's single file svd_xt.safetensors / svd_xt_1_1.safetensors "
                           "in models/checkpoints."}),
            "animation": ANIMATION.input("The animation weights on SVD-xt."),
            "checkpoint": (model_choices("animation", OFFICIAL_CHECKPOINTS), {
                "tooltip": "MimicMotion_1-1.pth, or StableAnimator's Animation/unet.pth (pose_net.pth beside "
                           "it), in models/animation. Not used by the tiny model."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "auto: ComfyUI's choice (fp32 on CPU)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, animation=None):
        return validate(animation=(ANIMATION, animation))

    @classmethod
    def IS_CHANGED(cls, svd_folder=None, checkpoint=None, **kwargs):
        """The files' fingerprint: a file replaced under the same name is loaded again."""
        if not svd_folder or svd_folder == TINY_CHOICE:
            return ""
        folders = [os.path.join(root, svd_folder) for root in folder_paths.get_folder_paths("diffusers")]
        unet = folder_paths.get_full_path("animation", checkpoint or "")
        pose_net = unet and os.path.join(os.path.dirname(unet), STABLEANIMATOR_POSE_NET)
        return files_key(folder_paths.get_full_path("checkpoints", svd_folder), *folders, unet, pose_net)

    def load(self, svd_folder, animation, checkpoint, dtype):
        variant, torch_dtype = ANIMATION.key(animation, "animation"), resolve_dtype(dtype)
        if svd_folder == TINY_CHOICE:
            from ..models.pipelines.svd_tiny import tiny_animation_model
            base = tiny_animation_model(variant, dtype=torch_dtype)
        else:
            base = self._load_real(svd_folder, variant, checkpoint, torch_dtype)
        container = SVDAnimation(base, variant, tiny=svd_folder == TINY_CHOICE)
        return (managed(container),)  # ComfyUI may load it partially (low VRAM): see nodes/lowvram.py

    @staticmethod
    def _load_real(svd_folder, variant, checkpoint, dtype):
        from ..models.pipelines.svd_models import load_animation_unet
        from ..models.svd.base import load_svd_base
        unet_path = _checkpoint_path(checkpoint, variant)
        pose_net = _pose_net_path(unet_path, checkpoint) if variant == "stableanimator" else None
        single_file = folder_paths.get_full_path("checkpoints", svd_folder)
        if single_file and os.path.isfile(single_file):
            from ..models.svd.single_file import load_svd_single_file
            base = load_svd_single_file(single_file, dtype=dtype, unet_variant=variant)
        else:
            base = load_svd_base(_svd_folder_path(svd_folder), dtype=dtype, unet_variant=variant)
        return load_animation_unet(base, unet_path, pose_net)


class _StepReport:
    """Sampler callback: progress bar, cancel, and a latent preview when the host has a previewer."""

    def __init__(self, steps: int, node_id, device):
        self.progress = Progress(steps, node_id)
        self.previewer = None
        try:
            import comfy.latent_formats
            import latent_preview
            self.previewer = latent_preview.get_previewer(device, comfy.latent_formats.SD15())
        except Exception:  # noqa: BLE001 - previews are optional; hosts without them still sample
            self.previewer = None

    def __call__(self, done: int, total: int, x0: torch.Tensor) -> None:
        mm.throw_exception_if_processing_interrupted()
        preview = None
        if self.previewer is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1])
        self.progress.bar.update_absolute(done, total, preview)


class SVDAnimateSampler:
    DESCRIPTION = ("Animates the reference image along the pose frames with MimicMotion or StableAnimator: EDM "
                   "Euler with per-frame linear CFG, long videos in overlapping tiles, chunked VAE decode. "
                   "MimicMotion conditions on the reference's own pose as an extra first frame and drops it "
                   "from the output.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "animate"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (SVD_ANIMATION_MODEL,),
                "reference_image": ("IMAGE", {"tooltip": "One frame, both sides a multiple of 64, the same "
                                                         "size as the pose frames."}),
                "pose_images": ("IMAGE", {"tooltip": "Skeleton frames (PoseAlign / DWPoseExtract skeleton)."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 200}),
                "cfg_min": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                      "tooltip": "Guidance of the first frame (1 = none)."}),
                "cfg_max": ("FLOAT", {"default": 2.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                      "tooltip": "Guidance of the last frame; linear in between."}),
                "fps": ("INT", {"default": 7, "min": 1, "max": 60}),
                "motion_bucket_id": ("INT", {"default": 127, "min": 0, "max": 1023}),
                "noise_aug_strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                                 "tooltip": "0.0 MimicMotion, 0.02 StableAnimator."}),
                "tile_size": ("INT", {"default": 16, "min": 2, "max": 128,
                                      "tooltip": "Frames per window (16; MimicMotion 1.1 uses 72)."}),
                "tile_overlap": ("INT", {"default": 6, "min": 1, "max": 64}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "decode_chunk": ("INT", {"default": 0, "min": 0, "max": 64,
                                         "tooltip": "Frames per VAE decode call; lower saves memory. 0 = the official "
                                                    "script's value: StableAnimator "
                                                    f"{DECODE_CHUNKS['stableanimator']}, MimicMotion "
                                                    f"{DECODE_CHUNKS['mimicmotion']}."}),
            },
            "optional": {
                "reference_pose": ("IMAGE", {"tooltip": "MimicMotion: the reference's own skeleton (first "
                                                        "frame used); without it the first pose frame is used."}),
                "face_refine": (HJB_FACE_REFINE, {"tooltip": "HJB Face Refine: StableAnimator's face "
                                                               "optimisation during sampling (slow)."}),
                "control": (SVD_CONTROL, {"tooltip": "DisPose Control Apply: DisPose's motion field and "
                                                       "keypoint guidance (MimicMotion)."}),
                "noise_device": (list(NOISE_DEVICES), {
                    "default": "model",
                    "tooltip": "Whose random generator draws the noise (one generator: the reference's noise "
                               "augmentation first, then the start latents, as the official scripts). 'model': "
                               "the sampling device's, as the official scripts (same seed + same device = the "
                               "official noise; a CUDA generator gives other noise than a CPU one). 'cpu': the "
                               "CPU's, so a seed gives the same video on every machine."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def animate(self, model, reference_image, pose_images, steps, cfg_min, cfg_max, fps, motion_bucket_id,
                noise_aug_strength, tile_size, tile_overlap, seed, decode_chunk, reference_pose=None,
                face_refine=None, control=None, noise_device="model", unique_id=None):
        from ..models.svd.sampler import SamplerSettings
        net = model.model
        if getattr(net, "animation", None) == "vividpose":  # VividPose Loader's model (nodes/vividpose.py)
            from .vividpose import animate_vividpose_model
            values = dict(steps=steps, cfg_min=cfg_min, cfg_max=cfg_max, fps=fps, motion_bucket_id=motion_bucket_id,
                          noise_aug_strength=noise_aug_strength, tile_size=tile_size, tile_overlap=tile_overlap,
                          seed=seed)
            return animate_vividpose_model(
                model, reference_image, pose_images, values, decode_chunk, noise_device,
                _StepReport(steps, unique_id, mm.get_torch_device()),
                dict(reference_pose=reference_pose, face_refine=face_refine, control=control))
        if not isinstance(net, SVDAnimation):
            raise MarionetteError("The model input is not an SVD animation model.",
                                  "Connect the output of SVD Animation Loader.")
        if noise_device not in NOISE_DEVICES:
            raise MarionetteError(f"Unknown noise device '{noise_device}'.", f"Pick one of {', '.join(NOISE_DEVICES)}.")
        settings = SamplerSettings.preset(
            net.animation, steps=steps, cfg_min=cfg_min, cfg_max=cfg_max, fps=fps,
            motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength, tile_size=tile_size,
            tile_overlap=tile_overlap, seed=seed)
        face_tokens = model.model_options.get(FACE_TOKENS_KEY)
        device = mm.get_torch_device()
        extra = ([] if control is None else [control.patcher]) + ([] if face_refine is None else
                                                                   [patcher_for(face_refine.embedder)])
        window = int(pose_images.shape[0]) + 1  # HJB's official single window holds every frame
        if getattr(face_refine, "window", "tiles") != "single":
            window = min(tile_size, window)
        load_on_device(model, *extra, memory_required=unet_memory_required(
            window, int(reference_image.shape[1]), int(reference_image.shape[2]), net.get_dtype()))
        result = animate_svd(
            net, reference_image, pose_images, settings, device=device, reference_pose=reference_pose,
            face_tokens=face_tokens, dispose=None if control is None else control.guidance, refine=face_refine,
            decode_chunk=decode_chunk or None, noise_device="cpu" if noise_device == "cpu" else device,
            on_step=_StepReport(settings.steps, unique_id, device), check=check_interrupt)
        frames = result.frames.to(mm.intermediate_device())
        ui = self._ui(net, frames, fps, face_tokens is not None, result.face_losses)
        if control is not None:
            guidance = control.guidance
            ui["marionette_svd"][0]["dispose"] = {"motion": guidance.motion.method, "strength": guidance.strength,
                                                  "keypoints": guidance.correspondence is not None}
        return {"ui": ui, "result": (frames, {"samples": result.latents.to(mm.intermediate_device())})}

    @staticmethod
    def _ui(net, frames, fps, face_id=False, face_losses=()) -> dict:
        uint8 = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        ui = preview_ui(np.ascontiguousarray(uint8), fps=fps, prefix="marionette_svd")
        info = {"frames": int(frames.shape[0]), "model": net.animation, "tiny": net.tiny, "face_id": face_id}
        if face_losses:
            info["face_refine"] = {"steps_refined": len(face_losses), "loss_first": face_losses[0][0],
                                   "loss_last": face_losses[-1][-1]}
        if net.tiny:
            info["warning"] = TINY_WARNING.format(
                diffusers=os.path.join(folder_paths.models_dir, "diffusers"),
                animation=os.path.join(folder_paths.models_dir, FOLDERS["animation"][0]))
        ui["marionette_svd"] = [info]
        return ui
