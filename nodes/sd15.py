"""Champ and Animate Anyone (Moore-AnimateAnyone weights) on SD1.5 + ReferenceNet + motion modules: the loader
and the two samplers (Champ: SMPL guidance maps; Animate Anyone: skeleton frames)."""
from __future__ import annotations

import os

import numpy as np
import torch

import comfy.model_management as mm
import folder_paths

from ..models.errors import MarionetteError
from ..models.pipelines.sd15_animation import SD15Animation, animate_sd15
from ..models.sd15.context import MAX_CONTEXT, OFFICIAL_CONTEXT, OFFICIAL_OVERLAP
from .combos import Combo, validate
from .host import (DTYPE_CHOICES, Progress, check_interrupt, load_on_device, preview_ui, resolve_dtype,
                   unet_memory_required)
from .model_cache import files_key, managed
from .model_paths import FOLDERS, diffusers_folders, require_model
from .socket_types import SD15_ANIMATION_MODEL
from .tiny_models import tiny_choices

TINY_CHOICE = "tiny random (no download, testing only)"
FAMILY = Combo({"champ": "Champ (fudan-generative-ai/champ): depth, normal, semantic and skeleton guidance encoders",
                "animate_anyone": "Animate Anyone (Moore-AnimateAnyone weights, patrolli/AnimateAnyone): pose guider"})
BETA_SCHEDULE = Combo({"linear": "official inference (the yaml's 'linear' = diffusers' linspace(0.00085, 0.012); "
                                 "ComfyUI calls it 'sqrt_linear')",
                       "scaled_linear": "the schedule the weights were trained with (ComfyUI calls it 'linear'); "
                                        "some find it cleaner"})
NOISE_DEVICE = Combo({"model": "the sampling device's generator, as Champ's script (torch.Generator('cuda'))",
                      "cpu": "the CPU generator, as Moore's script (torch.manual_seed): a seed gives the same video "
                             "on every machine"})
OFFICIAL_UNETS = ("champ/denoising_unet.pth", "animate_anyone/denoising_unet.pth")
OFFICIAL_IMAGE_ENCODER = "sd-image-variations-diffusers"
OFFICIAL_VAE = "sd-vae-ft-mse"
SOURCES = {"champ": "Hugging Face 'fudan-generative-ai/champ', folder champ/",
           "animate_anyone": "Hugging Face 'patrolli/AnimateAnyone'"}
CHAMP_FILES = {"depth": "guidance_encoder_depth.pth", "normal": "guidance_encoder_normal.pth",
               "semantic_map": "guidance_encoder_semantic_map.pth", "dwpose": "guidance_encoder_dwpose.pth"}
TINY_WARNING = ("untrained tiny model: the frames are noise, not an animation. Put the real weights in place: "
                "denoising_unet.pth, reference_unet.pth, motion_module.pth and pose_guider.pth (Animate Anyone) or "
                "guidance_encoder_*.pth (Champ) in one folder of {animation}, sd-vae-ft-mse and the "
                "sd-image-variations image_encoder, then pick them in the loader.")


def _unet_choices() -> list[str]:
    found = [f for f in folder_paths.get_filename_list("animation") if os.path.basename(f).startswith("denoising_unet")]
    return list(OFFICIAL_UNETS) + sorted(f for f in found if f not in OFFICIAL_UNETS)


def _named_folder(name: str, kinds: tuple[str, ...]) -> str | None:
    if not name or os.path.isabs(name) or ".." in name.split("/"):
        return None
    for kind in kinds:
        for root in folder_paths.get_folder_paths(kind):
            if os.path.isdir(os.path.join(root, name)):
                return os.path.join(root, name)
    return None


def _image_encoder_path(name: str) -> str:
    path = folder_paths.get_full_path("clip_vision", name)
    if path and os.path.isfile(path):  # a file inside a transformers folder loads as that folder
        folder = os.path.dirname(path)
        return folder if os.path.isfile(os.path.join(folder, "config.json")) else path
    folder = _named_folder(name, ("diffusers", "clip_vision"))
    if folder:
        return folder
    raise MarionetteError(f"The image encoder '{name}' was not found in the 'clip_vision' or 'diffusers' model "
                          "folders.",
                          "Download the image_encoder folder of Hugging Face "
                          "'lambdalabs/sd-image-variations-diffusers' "
                          f"into {os.path.join(folder_paths.models_dir, 'diffusers', OFFICIAL_IMAGE_ENCODER)} (or put "
                          "it in models/clip_vision).")


def _vae_path(name: str) -> str:
    path = folder_paths.get_full_path("vae", name)
    if path and os.path.isfile(path):
        return path
    folder = _named_folder(name, ("diffusers", "vae"))
    if folder:
        return folder
    raise MarionetteError(f"The VAE '{name}' was not found in the 'vae' or 'diffusers' model folders.",
                          f"Download Hugging Face 'stabilityai/sd-vae-ft-mse' into "
                          f"{os.path.join(folder_paths.models_dir, 'diffusers', OFFICIAL_VAE)}, or put "
                          "vae-ft-mse-840000-ema-pruned.safetensors into models/vae.")


def _family_files(unet_path: str, family: str) -> dict[str, object]:
    """The files next to denoising_unet.pth: the backbone and the family's guidance."""
    folder, fix = os.path.dirname(unet_path), f"Put the files of {SOURCES[family]} into {os.path.dirname(unet_path)}."
    files: dict[str, object] = {}
    for name in ("reference_unet.pth", "motion_module.pth"):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise MarionetteError(f"{name} was not found next to {os.path.basename(unet_path)} (in {folder}).", fix)
        files[name.split(".")[0]] = path
    if family == "animate_anyone":
        path = os.path.join(folder, "pose_guider.pth")
        if not os.path.isfile(path):
            champ = [n for n in CHAMP_FILES.values() if os.path.isfile(os.path.join(folder, n))]
            hint = f" That folder holds Champ's {', '.join(champ)}: pick family 'champ'." if champ else ""
            raise MarionetteError(f"pose_guider.pth was not found in {folder}.{hint}", fix)
        files["pose_guider"] = path
    else:
        guidance = {k: os.path.join(folder, n) for k, n in CHAMP_FILES.items()
                    if os.path.isfile(os.path.join(folder, n))}
        if not guidance:
            hint = (" That folder holds Moore-AnimateAnyone's pose_guider.pth: pick family 'animate_anyone'."
                    if os.path.isfile(os.path.join(folder, "pose_guider.pth")) else "")
            raise MarionetteError(f"No guidance_encoder_*.pth was found in {folder}.{hint}", fix)
        files["guidance"] = guidance
    return files


class SD15AnimationLoader:
    DESCRIPTION = ("Loads Champ or Animate Anyone (Moore-AnimateAnyone weights): denoising_unet.pth from "
                   "models/animation with reference_unet.pth, motion_module.pth and pose_guider.pth or "
                   "guidance_encoder_*.pth beside it, the sd-image-variations image encoder and sd-vae-ft-mse. Every "
                   f"file is checked tensor by tensor. Tests and the demo (MARIONETTE_TEST_MODELS=1) can pick "
                   f"'{TINY_CHOICE}', a small untrained model whose frames are noise.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "load"
    RETURN_TYPES = (SD15_ANIMATION_MODEL,)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "family": FAMILY.input("Which model the files are (checked against the files' tensors)."),
            "denoising_unet": (tiny_choices(TINY_CHOICE) + _unet_choices(), {
                "tooltip": "denoising_unet.pth in models/animation (e.g. champ/denoising_unet.pth); "
                           "reference_unet.pth, motion_module.pth and the guidance files are read from its folder."}),
            "image_encoder": ([OFFICIAL_IMAGE_ENCODER] + sorted(
                set(diffusers_folders() + folder_paths.get_filename_list("clip_vision")) - {OFFICIAL_IMAGE_ENCODER}), {
                "tooltip": "The sd-image-variations CLIP image encoder (ViT-L/14): the diffusers folder "
                           "(sd-image-variations-diffusers, image_encoder/ inside) or its files in "
                           "models/clip_vision."}),
            "vae": ([OFFICIAL_VAE] + sorted(set(diffusers_folders() + folder_paths.get_filename_list("vae"))
                                            - {OFFICIAL_VAE}), {
                "tooltip": "sd-vae-ft-mse: its diffusers folder, or vae-ft-mse-840000-ema-pruned.safetensors in "
                           "models/vae."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "auto: ComfyUI's choice (fp32 on CPU). The "
                                                                    "official runs use fp16."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, family=None):
        return validate(family=(FAMILY, family))

    @classmethod
    def IS_CHANGED(cls, denoising_unet=None, image_encoder=None, vae=None, **kwargs):
        if not denoising_unet or denoising_unet == TINY_CHOICE:
            return ""
        unet = folder_paths.get_full_path("animation", denoising_unet)
        folder = unet and os.path.dirname(unet)
        beside = [os.path.join(folder, n) for n in ("reference_unet.pth", "motion_module.pth", "pose_guider.pth",
                                                    *CHAMP_FILES.values())] if folder else []
        return files_key(unet, *beside, folder_paths.get_full_path("clip_vision", image_encoder or ""),
                         folder_paths.get_full_path("vae", vae or ""),
                         _named_folder(image_encoder or "", ("diffusers", "clip_vision")),
                         _named_folder(vae or "", ("diffusers", "vae")))

    def load(self, family, denoising_unet, image_encoder, vae, dtype):
        family, torch_dtype = FAMILY.key(family, "family"), resolve_dtype(dtype)
        if denoising_unet == TINY_CHOICE:
            model = self._tiny(family, torch_dtype)
        else:
            model = self._real(family, denoising_unet, image_encoder, vae, torch_dtype)
        return (managed(model),)  # ComfyUI loads, partially loads (low VRAM) and offloads it

    @staticmethod
    def _tiny(family, dtype) -> SD15Animation:
        from ..models.sd15.refnet_tiny import tiny_image_encoder, tiny_vae
        if family == "champ":
            from ..models.champ.tiny import tiny_champ
            loaded = tiny_champ(dtype=dtype)
        else:
            from ..models.animate_anyone.tiny import tiny_animate_anyone
            loaded = tiny_animate_anyone(dtype=dtype)
        return SD15Animation.from_parts(family, loaded, tiny_vae(dtype=dtype), tiny_image_encoder(dtype=dtype),
                                        tiny=True)

    @staticmethod
    def _real(family, denoising_unet, image_encoder, vae, dtype) -> SD15Animation:
        from ..models.sd15.vae import load_vae
        from ..models.sd15.clip_image import load_image_encoder
        unet_path = require_model("animation", denoising_unet, SOURCES[family])
        files = _family_files(unet_path, family)
        encoder_path, vae_path = _image_encoder_path(image_encoder), _vae_path(vae)
        if family == "champ":
            from ..models.champ.loading import load_champ
            loaded = load_champ(unet_path, files["reference_unet"], files["motion_module"], files["guidance"], dtype)
        else:
            from ..models.animate_anyone.loading import load_animate_anyone
            loaded = load_animate_anyone(unet_path, files["reference_unet"], files["motion_module"],
                                         files["pose_guider"], dtype)
        return SD15Animation.from_parts(family, loaded, load_vae(vae_path, dtype),
                                        load_image_encoder(encoder_path, dtype),
                                        files={"image_encoder": encoder_path, "vae": vae_path})


class _Report:
    """Sampler callbacks: one progress bar over every window of every step, cancel, a latent preview per step."""

    def __init__(self, node_id, device):
        self.bar, self.previewer, self.done, self.total = None, None, 0, 1
        self.node_id = node_id
        try:
            import comfy.latent_formats
            import latent_preview
            self.previewer = latent_preview.get_previewer(device, comfy.latent_formats.SD15())
        except Exception:  # noqa: BLE001 - previews are optional; hosts without them still sample
            self.previewer = None

    def window(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(total, self.node_id).bar
        self.done, self.total = done, total
        mm.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)

    def step(self, done: int, steps: int, x0: torch.Tensor) -> None:
        mm.throw_exception_if_processing_interrupted()
        if self.previewer is not None and self.bar is not None:
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1])
            self.bar.update_absolute(self.done, self.total, preview)


class _SD15Sampler:
    FAMILY = ""
    CATEGORY = "Marionette/Animation"
    FUNCTION = "animate"
    RETURN_TYPES = ("IMAGE", "LATENT")
    RETURN_NAMES = ("frames", "latent")
    DEFAULT_STEPS, DEFAULT_NOISE = 20, "model"

    @classmethod
    def common_inputs(cls) -> dict:
        return {
            "steps": ("INT", {"default": cls.DEFAULT_STEPS, "min": 1, "max": 200,
                              "tooltip": "DDIM steps (Champ's script 20, Moore's 30)."}),
            "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 20.0, "step": 0.1,
                              "tooltip": "Guidance scale (3.5 official). 1 or less: no guidance, one UNet pass per "
                                         "window."}),
            "beta_schedule": BETA_SCHEDULE.input("DDIM betas 0.00085 -> 0.012 with zero terminal SNR, v-prediction, "
                                                 "trailing timesteps."),
            "context_frames": ("INT", {"default": OFFICIAL_CONTEXT, "min": 1, "max": MAX_CONTEXT,
                                       "tooltip": f"Frames the motion modules see at once (official 24, at most "
                                                  f"{MAX_CONTEXT})."}),
            "context_overlap": ("INT", {"default": OFFICIAL_OVERLAP, "min": 0, "max": MAX_CONTEXT - 1,
                                        "tooltip": "Frames shared by neighbouring windows (official 4)."}),
            "closed_loop": ("BOOLEAN", {"default": True, "tooltip": "On (official): the last window wraps around to "
                                                                     "the first frames, as for a looping clip. Off: "
                                                                     "windows never wrap."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 100000,
                               "tooltip": "How many guidance frames to animate (0 = all)."}),
            "decode_chunk": ("INT", {"default": 4, "min": 1, "max": 64,
                                     "tooltip": "Frames per VAE decode call (the same frames; lower saves memory)."}),
            "noise_device": NOISE_DEVICE.input("Whose random generator draws the start noise.", cls.DEFAULT_NOISE),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, beta_schedule=None, noise_device=None):
        return validate(beta_schedule=(BETA_SCHEDULE, beta_schedule), noise_device=(NOISE_DEVICE, noise_device))

    def run(self, model, reference_image, guidance, steps, cfg, beta_schedule, context_frames, context_overlap,
            closed_loop, seed, frames, decode_chunk, noise_device, unique_id):
        from ..models.sd15.sampler import SD15SamplerSettings
        net = getattr(model, "model", None)
        if not isinstance(net, SD15Animation):
            raise MarionetteError("The model input is not a Champ / Animate Anyone model.",
                                  "Connect the output of Champ / Animate Anyone Loader.")
        if net.family != self.FAMILY:
            raise MarionetteError(f"This sampler runs {self.FAMILY} but the loader loaded {net.family}.",
                                  f"Set the loader's family to '{self.FAMILY}' with that model's files, or use the "
                                  f"{net.family} sampler.")
        settings = SD15SamplerSettings.preset(
            self.FAMILY, steps=steps, cfg=float(cfg), beta_schedule=BETA_SCHEDULE.key(beta_schedule, "beta_schedule"),
            context_frames=context_frames, context_overlap=context_overlap, closed_loop=bool(closed_loop), seed=seed)
        guidance = {name: images for name, images in guidance.items() if images is not None}
        height, width = (int(next(iter(guidance.values())).shape[1]), int(next(iter(guidance.values())).shape[2])) \
            if guidance else (int(reference_image.shape[1]), int(reference_image.shape[2]))
        device = mm.get_torch_device()
        window = min(context_frames, frames or 10 ** 9, *(int(g.shape[0]) for g in guidance.values()))
        load_on_device(model, memory_required=unet_memory_required(window, height, width, net.get_dtype()))
        report = _Report(unique_id, device)
        noise = "cpu" if NOISE_DEVICE.key(noise_device, "noise_device") == "cpu" else device
        result = animate_sd15(net, reference_image, guidance, settings, device=device, frames=frames or None,
                              noise_device=noise, decode_chunk=decode_chunk, on_step=report.step,
                              on_window=report.window, check=check_interrupt)
        out = result.frames.to(mm.intermediate_device())
        return {"ui": self._ui(net, out, sorted(guidance)),
                "result": (out, {"samples": result.latents.to(mm.intermediate_device())})}

    @staticmethod
    def _ui(net, frames, maps) -> dict:
        uint8 = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        ui = preview_ui(np.ascontiguousarray(uint8), fps=24, prefix="marionette_sd15")
        info = {"frames": int(frames.shape[0]), "model": net.family, "tiny": net.tiny, "guidance": maps}
        if net.family == "champ" and len(maps) < 4:
            info["note"] = (f"Champ was trained with all four maps; {', '.join(maps)} alone is outside its training "
                            "distribution.")
        if net.tiny:
            folder = os.path.join(folder_paths.models_dir, FOLDERS["animation"][0])
            info["warning"] = TINY_WARNING.format(animation=folder)
        ui["marionette_sd15"] = [info]
        return ui


GUIDANCE_INPUTS = {"depth": "depth", "normal": "normal", "semantic": "semantic_map", "skeleton": "dwpose"}


class ChampSampler(_SD15Sampler):
    DESCRIPTION = ("Animates the reference along Champ's guidance maps (RenderGuidance's depth, normal, semantic and "
                   "skeleton, any subset; all four as trained): DDIM over 24-frame windows with CFG, as Champ's "
                   "inference script.")
    FAMILY, DEFAULT_STEPS, DEFAULT_NOISE = "champ", 20, "model"

    @classmethod
    def INPUT_TYPES(cls):
        maps = {name: ("IMAGE", {"tooltip": f"RenderGuidance's {name} frames (Champ's encoding)."})
                for name in GUIDANCE_INPUTS}
        return {"required": {"model": (SD15_ANIMATION_MODEL,),
                             "reference_image": ("IMAGE", {"tooltip": "One frame; squashed to the maps' size."}),
                             **cls.common_inputs()},
                "optional": maps, "hidden": {"unique_id": "UNIQUE_ID"}}

    def animate(self, model, reference_image, steps, cfg, beta_schedule, context_frames, context_overlap,
                closed_loop, seed, frames, decode_chunk, noise_device, depth=None, normal=None, semantic=None,
                skeleton=None, unique_id=None):
        given = {"depth": depth, "normal": normal, "semantic": semantic, "skeleton": skeleton}
        guidance = {GUIDANCE_INPUTS[name]: images for name, images in given.items() if images is not None}
        return self.run(model, reference_image, guidance, steps, cfg, beta_schedule, context_frames, context_overlap,
                        closed_loop, seed, frames, decode_chunk, noise_device, unique_id)


class AnimateAnyoneSampler(_SD15Sampler):
    DESCRIPTION = ("Animates the reference along skeleton frames (PoseAlign / DWPoseExtract) with the Animate Anyone "
                   "model: DDIM over 24-frame windows with CFG, as Moore-AnimateAnyone's pose2vid script.")
    FAMILY, DEFAULT_STEPS, DEFAULT_NOISE = "animate_anyone", 30, "cpu"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (SD15_ANIMATION_MODEL,),
                             "reference_image": ("IMAGE", {"tooltip": "One frame; squashed to the pose frames' size."}),
                             "pose_images": ("IMAGE", {"tooltip": "Skeleton frames (PoseAlign / DWPoseExtract), "
                                                                  "both sides multiples of 8."}),
                             **cls.common_inputs()},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def animate(self, model, reference_image, pose_images, steps, cfg, beta_schedule, context_frames, context_overlap,
                closed_loop, seed, frames, decode_chunk, noise_device, unique_id=None):
        return self.run(model, reference_image, {"pose": pose_images}, steps, cfg, beta_schedule, context_frames,
                        context_overlap, closed_loop, seed, frames, decode_chunk, noise_device, unique_id)
