"""VividPose Loader and VividPose Guidance: a VividPose model (and its body renders) for SVD Animate Sampler.

The loader gives an SVD animation model, so the shared sampler node runs it (windows, CFG ramp, chunked
decode, cancel, previews); VividPose Guidance puts the τ1 body renders (and the identity scale) on a
clone of it, as ID Adapter Apply does with face tokens. SVD Animate Sampler hands VividPose models to
`animate_vividpose_model` here."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

import comfy.model_management as mm
import folder_paths

from ..models.errors import MarionetteError
from .combos import Combo, validate
from .host import DTYPE_CHOICES, check_interrupt, load_on_device, preview_ui, resolve_dtype, unet_memory_required
from .antelopev2 import antelopev2_sessions, insightface_root, reference_uint8
from .model_cache import files_key, managed
from .model_paths import diffusers_folders, model_choices, require_model
from .socket_types import SVD_ANIMATION_MODEL
from .tiny_models import tiny_choices

TINY_CHOICE = "tiny random VividPose (no download, testing only)"
SMALL_CHOICE = "vividpose-small-96x128 (bundled)"
OFFICIAL_CHECKPOINT = "vividpose.safetensors"
OFFICIAL_SVD = "stable-video-diffusion-img2vid-xt"
GUIDANCE_KEY = "marionette_vividpose_guidance"  # model_options entry of a VividPose model clone
WHERE = ("VividPose has no released weights: train one with Marionette's VividPose trainer and put the "
         ".safetensors file into models/animation")
TINY_WARNING = "untrained tiny VividPose: the frames are noise, not an animation. " + WHERE + "."


FACE = Combo({"none": "no identity: zero identity tokens (also what a model trained without ArcFace needs)",
              "antelopev2": "the reference's largest face through insightface antelopev2 (raw 512-d ArcFace "
                            "embedding), into VividPose's identity controller"})
NO_FACE_FOUND = Combo({"error": "stop with an error", "zeros": "go on with zero identity tokens"})


@dataclass
class VividPoseGuidanceInputs:
    render: torch.Tensor          # IMAGE [F, H, W, 3]: τ1's body renders
    id_scale: float
    face_embedding: torch.Tensor | None = None  # [512] raw ArcFace embedding, or None (zero identity tokens)


def _svd_path(name: str) -> str:
    single = folder_paths.get_full_path("checkpoints", name)
    if single and os.path.isfile(single):
        return single
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise MarionetteError(f"The SVD-xt folder or file '{name}' was not found in the 'diffusers' or 'checkpoints' "
                          "model folders.", "Put the stable-video-diffusion-img2vid-xt diffusers folder into "
                          f"{os.path.join(folder_paths.models_dir, 'diffusers')} (VividPose uses its VAE and CLIP).")


def _face_embedding(reference: torch.Tensor, on_missing: str) -> tuple[torch.Tensor | None, dict]:
    """The reference's raw ArcFace embedding from antelopev2 (ComfyUI's insightface folder), held in the
    same model-cache slot ID Adapter Apply uses."""
    if reference is None:
        raise MarionetteError("The face identity needs the reference image (one frame).",
                              "Connect the reference to VividPose Guidance's reference_image.")
    pixels = reference_uint8(reference)
    sessions = antelopev2_sessions(insightface_root())
    load_on_device(sessions)
    embedding, box = sessions.model.get().largest_face_embedding(pixels)
    if embedding is None:
        if on_missing != "zeros":
            raise MarionetteError("No face found in the reference image, so VividPose cannot keep the identity.",
                                  "Use a reference with a visible face, or set no_face to 'zeros'.")
        return None, {"face": False}
    return torch.from_numpy(np.asarray(embedding, np.float32)), {"face": True, "box": [float(v) for v in box]}


def _small_choices() -> list[str]:
    from ..models.vividpose.small import small_checkpoint
    return [SMALL_CHOICE] if small_checkpoint() is not None else []


def _small_path() -> str:
    from ..models.vividpose.small import small_checkpoint
    path = small_checkpoint()
    if path is None:
        raise MarionetteError("The bundled small VividPose (models/vividpose/weights/vividpose_small_96x128."
                              "safetensors) is missing from this install.",
                              "Reinstall the pack, or train one: python -m models.training vividpose (see README).")
    return str(path)


def _vividpose_net(model):
    net = getattr(model, "model", None)
    if getattr(net, "animation", None) != "vividpose":
        raise MarionetteError("The model input is not a VividPose model.", "Connect the output of VividPose Loader.")
    return net


def _describe(net) -> dict:
    config = net.model.config
    info = {"model": "vividpose", "tiny": net.tiny, "identity": config.identity, "id_tokens": config.id_tokens,
            "pose_injection": config.pose_injection, "render_type": config.render_type}
    if not config.identity:
        info["note"] = "trained without the identity controller (no ArcFace): the face comes from the reference only"
    for key in ("vae", "image_encoder", "train_size", "frames"):
        if key in config.extras:
            info[key] = config.extras[key]
    if net.tiny:
        info["warning"] = TINY_WARNING
    return info


class VividPoseLoader:
    DESCRIPTION = ("Loads a VividPose checkpoint (.safetensors with its architecture in the metadata) from "
                   "models/animation, with SVD-xt's VAE and CLIP image encoder, or with the ones the file bundles "
                   "(the pack's small model, trained on synthetic people at 96x128, bundles its own). Connect it "
                   "to VividPose Guidance, then SVD Animate Sampler.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "load"
    RETURN_TYPES = (SVD_ANIMATION_MODEL,)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": (tiny_choices(TINY_CHOICE) + _small_choices()
                           + model_choices("animation", (OFFICIAL_CHECKPOINT,)), {
                "tooltip": "A VividPose .safetensors in models/animation (made by the VividPose trainer), or the "
                           "bundled small model (96x128, synthetic people, no identity controller)."}),
            "svd_folder": ([OFFICIAL_SVD] + [f for f in diffusers_folders() if f != OFFICIAL_SVD], {
                "tooltip": "The SVD-xt diffusers folder in models/diffusers (its VAE and CLIP image encoder). "
                           "Not used by checkpoints that bundle their own (the small model) or the tiny one."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "auto: ComfyUI's choice (fp32 on CPU)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, checkpoint=None, svd_folder=None, **kwargs):
        if not checkpoint or checkpoint == TINY_CHOICE:
            return ""
        if checkpoint == SMALL_CHOICE:
            return files_key(_small_path())
        folders = [os.path.join(root, svd_folder or "") for root in folder_paths.get_folder_paths("diffusers")]
        return files_key(folder_paths.get_full_path("animation", checkpoint), *folders)

    def load(self, checkpoint, svd_folder, dtype):
        torch_dtype = resolve_dtype(dtype)
        if checkpoint == TINY_CHOICE:
            from ..models.pipelines.vividpose import tiny_vividpose_animation
            net = tiny_vividpose_animation(dtype=torch_dtype)
        else:
            from ..models.pipelines.vividpose import load_vividpose_animation
            from ..models.vividpose.checkpoint import companion_specs
            path = _small_path() if checkpoint == SMALL_CHOICE else require_model("animation", checkpoint, WHERE)
            svd = None if set(companion_specs(path)) == {"vae", "image_encoder"} else _svd_path(svd_folder)
            net = load_vividpose_animation(path, svd, torch_dtype)
        return {"ui": {"marionette_vividpose": [_describe(net)]}, "result": (managed(net),)}


class VividPoseGuidance:
    DESCRIPTION = ("VividPose's body guidance τ1: the body renders (RenderGuidance, the map the model was "
                   "trained on) for every driving frame, and the identity scale. SVD Animate Sampler takes the "
                   "skeleton frames (τ2) as its pose images.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "apply"
    RETURN_TYPES = (SVD_ANIMATION_MODEL,)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (SVD_ANIMATION_MODEL, {"tooltip": "VividPose Loader's model."}),
            "render_images": ("IMAGE", {"tooltip": "RenderGuidance's map of the type the model was trained on "
                                                   "(shown by the loader; 'dense' by default), one per frame."}),
            "id_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "Weight of the identity cross-attention (1 = as trained)."}),
            "face": FACE.input("The identity controller's input:"),
            "no_face": NO_FACE_FOUND.input("When the reference shows no face:"),
        }, "optional": {
            "reference_image": ("IMAGE", {"tooltip": "The reference (LoadReference), for face: antelopev2."}),
        }}

    @classmethod
    def IS_CHANGED(cls, face=None, **kwargs):
        """With face: antelopev2, the pack's fingerprint (a replaced model file makes the node run again)."""
        if face != "antelopev2":
            return ""
        from ..models.stableanimator.face_id import pack_folder
        return files_key(*(pack_folder(root) for root in folder_paths.get_folder_paths("insightface")))

    @classmethod
    def VALIDATE_INPUTS(cls, face=None, no_face=None):
        return validate(face=(FACE, face), no_face=(NO_FACE_FOUND, no_face))

    def apply(self, model, render_images, id_scale, face="none", no_face="error", reference_image=None):
        net = _vividpose_net(model)
        embedding, report = None, {"face": None}
        if FACE.key(face, "face") == "antelopev2":
            if not net.model.config.identity:
                raise MarionetteError("This VividPose model was trained without the identity controller (no "
                                      "ArcFace), so it cannot use the face.", "Set face to 'none'.")
            embedding, report = _face_embedding(reference_image, NO_FACE_FOUND.key(no_face, "no_face"))
        patched = model.clone()
        patched.model_options[GUIDANCE_KEY] = VividPoseGuidanceInputs(render_images, float(id_scale), embedding)
        return {"ui": {"marionette_face": [report]}, "result": (patched,)}


def animate_vividpose_model(model, reference_image, pose_images, settings_values: dict, decode_chunk: int,
                            noise_device: str, on_step, unsupported: dict):
    """SVD Animate Sampler's run for a VividPose model: `pose_images` are τ2's skeletons, the renders come
    from VividPose Guidance."""
    from ..models.pipelines.vividpose import animate_vividpose
    from ..models.svd.sampler import SamplerSettings
    net = _vividpose_net(model)
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
        raise MarionetteError(f"VividPose does not use {', '.join(given)}.", "Disconnect those inputs.")
    guidance = model.model_options.get(GUIDANCE_KEY)
    if guidance is None:
        raise MarionetteError("This VividPose model has no body renders (τ1).",
                              "Put VividPose Guidance between VividPose Loader and SVD Animate Sampler.")
    settings = SamplerSettings(**settings_values)
    device = mm.get_torch_device()
    window = min(settings.tile_size, int(pose_images.shape[0]))
    load_on_device(model, memory_required=unet_memory_required(
        window, int(reference_image.shape[1]), int(reference_image.shape[2]), net.get_dtype()))
    result = animate_vividpose(net, reference_image, pose_images, guidance.render, settings, device=device,
                               face_embedding=guidance.face_embedding, id_scale=guidance.id_scale,
                               decode_chunk=decode_chunk or None,
                               noise_device="cpu" if noise_device == "cpu" else device, on_step=on_step,
                               check=check_interrupt)
    frames = result.frames.to(mm.intermediate_device())
    uint8 = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    ui = preview_ui(np.ascontiguousarray(uint8), fps=settings.fps, prefix="marionette_svd")
    ui["marionette_svd"] = [dict(_describe(net), frames=int(frames.shape[0]), id_scale=guidance.id_scale)]
    return {"ui": ui, "result": (frames, {"samples": result.latents.to(mm.intermediate_device())})}
