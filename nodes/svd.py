"""SVDAnimationLoader and SVDAnimateSampler: MimicMotion / StableAnimator video generation on SVD-xt."""
from __future__ import annotations

import inspect
import os

import numpy as np
import torch
from torch import nn

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..models.errors import MarionetteError
from .host import Progress, check_interrupt, preview_ui
from .model_paths import FOLDERS, model_choices, require_model

TINY_CHOICE = "tiny random (no download, testing only)"
ANIMATIONS = {"MimicMotion": "mimicmotion", "StableAnimator": "stableanimator"}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OFFICIAL_CHECKPOINTS = ("MimicMotion_1-1.pth", "Animation/unet.pth")
STABLEANIMATOR_POSE_NET = "pose_net.pth"  # read from the folder of StableAnimator's unet.pth
SOURCES = {
    "mimicmotion": "Hugging Face 'tencent/MimicMotion' (MimicMotion_1-1.pth), or the fp16 repack "
                   "MimicMotion-fp16.safetensors from 'Kijai/MimicMotion_pruned'",
    "stableanimator": "the 'Animation' folder of Hugging Face 'FrancisRing/StableAnimator' "
                      "(unet.pth with pose_net.pth beside it)",
}
SIZE_MULTIPLE = 64
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt")
FACE_TOKENS_KEY = "marionette_face_tokens"  # model_options entry IDAdapterApply sets on its clone
POSE_NET_CHUNK = 16  # pose frames per PoseNet call, so long videos do not hold every activation at once
TINY_WARNING = ("untrained tiny model: the frames are noise, not an animation. Put the real weights in "
                "place: the SVD-xt diffusers folder (stable-video-diffusion-img2vid-xt) in {diffusers} and "
                "MimicMotion_1-1.pth or StableAnimator's Animation/unet.pth + pose_net.pth in {animation}, "
                "then pick them in SVD Animation Loader.")


# ------------------------------------------------------------------------------------------ model
class SVDAnimationModel(nn.Module):
    """Everything one animation model needs, in one module so ComfyUI moves and offloads it as a whole.

    A plain container: ComfyUI's ModelPatcher writes `.device` onto the module it wraps, which diffusers
    models refuse (read-only property)."""

    def __init__(self, base, animation: str, tiny: bool):
        super().__init__()
        self.unet, self.pose_net = base.unet, base.pose_net
        self.vae, self.image_encoder = base.vae, base.image_encoder
        # StableAnimator's face tokens come from IDAdapterApply, on a ModelPatcher clone's model_options
        # (this container is shared by every clone, so it never holds per-reference state)
        self.animation, self.tiny = animation, tiny
        self.dtype_ = base.dtype
        self.vae_scaling_factor = base.vae_scaling_factor
        self.clip_mean, self.clip_std = base.clip_mean, base.clip_std
        self.files = dict(base.files)

    def get_dtype(self) -> torch.dtype:
        return self.dtype_


def _svd_folders() -> list[str]:
    found = set()
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            found.update(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return sorted(found)


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
                          "svd_xt.safetensors into models/checkpoints), or pick "
                          f"'{TINY_CHOICE}' to try the workflow without downloads.")


def _checkpoint_path(name: str, animation: str) -> str:
    return require_model("animation", name, SOURCES[animation])


def _pose_net_path(unet_path: str, checkpoint: str) -> str:
    path = os.path.join(os.path.dirname(unet_path), STABLEANIMATOR_POSE_NET)
    if os.path.isfile(path):
        return path
    raise MarionetteError(
        f"StableAnimator's {STABLEANIMATOR_POSE_NET} was not found next to {checkpoint} "
        f"(looked for {path}).",
        f"Put {STABLEANIMATOR_POSE_NET} from {SOURCES['stableanimator']} into {os.path.dirname(unet_path)}.")


def _resolve_dtype(choice: str) -> torch.dtype:
    if choice in DTYPES:
        return DTYPES[choice]
    if mm.get_torch_device().type == "cpu":
        return torch.float32
    dtype = mm.unet_dtype()
    return dtype if dtype in DTYPES.values() else torch.float16


class SVDAnimationLoader:
    DESCRIPTION = ("Loads MimicMotion or StableAnimator on SVD-xt: the SVD-xt diffusers folder (VAE, CLIP image "
                   "encoder) from models/diffusers and the animation checkpoint from models/animation. "
                   f"'{TINY_CHOICE}' builds a small untrained model so workflows run without downloads; its "
                   "frames are noise.")
    CATEGORY = "Marionette/Animation"
    FUNCTION = "load"
    RETURN_TYPES = ("SVD_ANIMATION_MODEL",)
    RETURN_NAMES = ("model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "svd_folder": ([TINY_CHOICE] + _svd_folders() + _svd_single_files(), {
                "tooltip": "SVD-xt: the stable-video-diffusion-img2vid-xt (or -1-1) diffusers folder in "
                           "models/diffusers, or ComfyUI's single file svd_xt.safetensors / svd_xt_1_1.safetensors "
                           "in models/checkpoints."}),
            "animation": (list(ANIMATIONS), {"default": "MimicMotion"}),
            "checkpoint": (model_choices("animation", OFFICIAL_CHECKPOINTS), {
                "tooltip": "MimicMotion_1-1.pth, or StableAnimator's Animation/unet.pth (pose_net.pth beside "
                           "it), in models/animation. Not used by the tiny model."}),
            "dtype": (["auto", "fp16", "bf16", "fp32"], {"default": "auto",
                                                        "tooltip": "auto: ComfyUI's choice (fp32 on CPU)."}),
        }}

    def load(self, svd_folder, animation, checkpoint, dtype):
        if animation not in ANIMATIONS:
            raise MarionetteError(f"Unknown animation model '{animation}'.", f"Pick one of {', '.join(ANIMATIONS)}.")
        variant, torch_dtype = ANIMATIONS[animation], _resolve_dtype(dtype)
        if svd_folder == TINY_CHOICE:
            from ..models.svd.tiny import tiny_animation_model
            base = tiny_animation_model(variant, dtype=torch_dtype)
        else:
            base = self._load_real(svd_folder, variant, checkpoint, torch_dtype)
        container = SVDAnimationModel(base, variant, tiny=svd_folder == TINY_CHOICE)
        patcher = comfy.model_patcher.ModelPatcher(container, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
        return (patcher,)

    @staticmethod
    def _load_real(svd_folder, variant, checkpoint, dtype):
        from ..models.svd.base import load_animation_unet, load_svd_base
        unet_path = _checkpoint_path(checkpoint, variant)
        pose_net = _pose_net_path(unet_path, checkpoint) if variant == "stableanimator" else None
        single_file = folder_paths.get_full_path("checkpoints", svd_folder)
        if single_file and os.path.isfile(single_file):
            from ..models.svd.single_file import load_svd_single_file
            base = load_svd_single_file(single_file, dtype=dtype, unet_variant=variant)
        else:
            base = load_svd_base(_svd_folder_path(svd_folder), dtype=dtype, unet_variant=variant)
        return load_animation_unet(base, unet_path, pose_net)


# ---------------------------------------------------------------------------------------- sampling
_LOAD_PARAMS = inspect.signature(mm.load_models_gpu).parameters


def load_on_device(*patchers) -> None:
    """Let ComfyUI make room and move the models. Full load: diffusers layers are plain torch layers, which
    2025 hosts would leave on the CPU without casting in a partial (low-VRAM) load."""
    kwargs = {"force_full_load": True} if "force_full_load" in _LOAD_PARAMS else {}
    mm.load_models_gpu(list(patchers), **kwargs)


def _check_sizes(reference, poses) -> tuple[int, int]:
    if reference.ndim != 4 or reference.shape[0] != 1:
        frames = reference.shape[0] if reference.ndim == 4 else "?"
        raise MarionetteError(f"The reference image must be one frame; got {frames}.",
                              "Pick one frame with ImageFromBatch (or connect LoadReference).")
    height, width = int(reference.shape[1]), int(reference.shape[2])
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise MarionetteError(f"The reference is {width}x{height}; the video size must be a multiple of "
                              f"{SIZE_MULTIPLE} on both sides.",
                              "Resize it with LoadReference or ImageScale (e.g. 576x1024 or 512x768).")
    if poses.ndim != 4 or poses.shape[0] < 1:
        raise MarionetteError(f"pose_images must be an IMAGE batch of frames; got shape {tuple(poses.shape)}.",
                              "Connect the skeleton output of PoseAlign or DWPoseExtract.")
    pose_h, pose_w = int(poses.shape[1]), int(poses.shape[2])
    if (pose_h, pose_w) != (height, width):
        raise MarionetteError(
            f"The pose frames are {pose_w}x{pose_h} but the reference image is {width}x{height}; they must "
            "be the same size.",
            "Draw the poses at the reference size: connect the reference to PoseAlign's reference_image, or "
            f"scale the pose frames to {width}x{height} with ImageScale.")
    return height, width


def _contexts(model: SVDAnimationModel, clip: torch.Tensor, face_tokens):
    """(cond, uncond) UNet contexts. StableAnimator without face tokens gets zeros in their place (the
    face branch then adds only the image-attention mean, as in its unconditional pass)."""
    if model.animation != "stableanimator":
        return clip, torch.zeros_like(clip)
    from ..models.svd.face_encoder import null_unet_context, unet_context
    from ..models.svd.id_adapter import NUM_FACE_TOKENS
    if face_tokens is None:
        face_tokens = clip.new_zeros(clip.shape[0], NUM_FACE_TOKENS, clip.shape[-1])
    face_tokens = face_tokens.to(clip.device, clip.dtype)
    return unet_context(clip, face_tokens), null_unet_context(clip, face_tokens)


def _face_refiner(net: SVDAnimationModel, spec, pose_images: torch.Tensor):
    """The sampler's HJB hook: one face box per sampled frame (MimicMotion's anchor frame has none)."""
    from ..models.svd.face_refine import FaceRefiner, face_boxes
    frames, size = int(pose_images.shape[0]), (int(pose_images.shape[1]), int(pose_images.shape[2]))
    if spec.target_masks.shape[0] != frames:
        raise MarionetteError(f"HJB Face Refine has {spec.target_masks.shape[0]} target face masks for {frames} "
                              "pose frames.",
                              "Build it from the same aligned pose (or one face mask per pose frame).")
    if spec.tiny and not net.tiny:
        raise MarionetteError("The tiny random face model only fits the tiny test model.",
                              "Pick Animation/glintr100_torch.pth in HJB Face Refine.")
    boxes = face_boxes(spec.target_masks, size)
    if net.animation == "mimicmotion":
        boxes = [None] + boxes
    embedder = spec.embedder.to(mm.get_torch_device())
    return FaceRefiner(embedder, spec.reference, boxes, net.vae, net.vae_scaling_factor, spec.settings,
                       check=check_interrupt)


def _controlled_unet(net: SVDAnimationModel, control, frames: int, size: tuple[int, int]):
    """(UNet callable, per-frame inputs) for sampling: the plain UNet, or DisPose's ControlNet around it."""
    if control is None:
        return None, None
    from ..models.dispose.controlled_unet import DisPoseUNet
    from .dispose import frame_inputs
    if net.animation != "mimicmotion":
        raise MarionetteError("DisPose's ControlNet was trained on MimicMotion, not StableAnimator.",
                              "Pick MimicMotion in SVD Animation Loader, or disconnect the control input.")
    container = control.patcher.model
    if container.tiny != net.tiny:
        raise MarionetteError("The tiny random DisPose ControlNet only fits the tiny test model (and the real "
                              "DisPose.pth only the real MimicMotion).",
                              "Pick matching models in DisPose ControlNet Loader and SVD Animation Loader.")
    keypoints = control.correspondence
    embeddings = None if keypoints is None else keypoints.embeddings
    if keypoints is not None and embeddings.shape[-1] != container.controlnet.point_adapter.embedding_channels:
        raise MarionetteError(
            f"The keypoint features are {embeddings.shape[-1]} wide but the ControlNet takes "
            f"{container.controlnet.point_adapter.embedding_channels}.",
            "Use SD1.5 in Keypoint Correspondence with DisPose.pth (the tiny SD1.5 goes with the tiny ControlNet).")
    unet = DisPoseUNet(net.unet, container.controlnet, size, embeddings, control.strength)
    return unet, frame_inputs(control, frames, size)


def _pose_features(model: SVDAnimationModel, poses: torch.Tensor, device, dtype) -> torch.Tensor:
    from ..models.svd.pose_net import pose_images_to_input
    pieces = []
    for start in range(0, poses.shape[0], POSE_NET_CHUNK):
        check_interrupt()
        chunk = pose_images_to_input(poses[start:start + POSE_NET_CHUNK].float().cpu(), dtype).to(device)
        pieces.append(model.pose_net(chunk))
    return torch.cat(pieces)


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
                "model": ("SVD_ANIMATION_MODEL",),
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
                "decode_chunk": ("INT", {"default": 8, "min": 1, "max": 64,
                                         "tooltip": "Frames per VAE decode call; lower saves memory."}),
            },
            "optional": {
                "reference_pose": ("IMAGE", {"tooltip": "MimicMotion: the reference's own skeleton (first "
                                                        "frame used); without it the first pose frame is used."}),
                "face_refine": ("HJB_FACE_REFINE", {"tooltip": "HJB Face Refine: StableAnimator's face "
                                                               "optimisation during sampling (slow)."}),
                "control": ("SVD_CONTROL", {"tooltip": "DisPose Control Apply: DisPose's motion field and "
                                                       "keypoint guidance (MimicMotion)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def animate(self, model, reference_image, pose_images, steps, cfg_min, cfg_max, fps, motion_bucket_id,
                noise_aug_strength, tile_size, tile_overlap, seed, decode_chunk, reference_pose=None,
                face_refine=None, control=None, unique_id=None):
        from ..models.svd.sampler import SamplerSettings
        net = model.model
        if not isinstance(net, SVDAnimationModel):
            raise MarionetteError("The model input is not an SVD animation model.",
                                  "Connect the output of SVD Animation Loader.")
        _check_sizes(reference_image, pose_images)
        poses = pose_images
        if net.animation == "mimicmotion":  # anchor frame 0 = the reference's pose, dropped after sampling
            anchor = pose_images[:1] if reference_pose is None else reference_pose[:1]
            _check_sizes(reference_image, anchor)
            poses = torch.cat([anchor.to(pose_images.device), pose_images])
        settings = SamplerSettings.preset(
            net.animation, steps=steps, cfg_min=cfg_min, cfg_max=cfg_max, fps=fps,
            motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength, tile_size=tile_size,
            tile_overlap=tile_overlap, seed=seed)
        face_tokens = model.model_options.get(FACE_TOKENS_KEY)
        unet, frame_inputs = _controlled_unet(net, control, poses.shape[0], tuple(reference_image.shape[1:3]))
        load_on_device(model, *([] if control is None else [control.patcher]))
        refiner = None
        try:
            refiner = None if face_refine is None else _face_refiner(net, face_refine, pose_images)
            latents = self._sample(net, reference_image, poses, settings, unique_id, face_tokens, refiner,
                                   unet, frame_inputs)
        finally:
            if face_refine is not None:
                face_refine.embedder.to(mm.unet_offload_device())
        frames = self._decode(net, latents, decode_chunk)
        ui = self._ui(net, frames, fps, face_tokens is not None, refiner)
        if control is not None:
            ui["marionette_svd"][0]["dispose"] = {"motion": control.motion.method, "strength": control.strength,
                                                  "keypoints": control.correspondence is not None}
        return {"ui": ui,
                "result": (frames, {"samples": latents.to(mm.intermediate_device())})}

    @staticmethod
    def _sample(net, reference, poses, settings, unique_id, face_tokens=None, refiner=None, unet=None,
                frame_inputs=None) -> torch.Tensor:
        from ..models.svd.conditioning import clip_image_embedding, reference_latent
        from ..models.svd.sampler import sample
        device, dtype = mm.get_torch_device(), net.get_dtype()
        reference = reference.float().cpu()
        clip = clip_image_embedding(net.image_encoder, reference, net.clip_mean, net.clip_std)
        cond, uncond = _contexts(net, clip, face_tokens)
        generator = torch.Generator(device=device).manual_seed(settings.seed)
        ref_latent = reference_latent(net.vae, reference, 1, settings.noise_aug_strength, generator, dtype)[0, 0]
        pose_features = _pose_features(net, poses, device, dtype)
        report = _StepReport(settings.steps, unique_id, device)
        return sample(unet or net.unet, cond, uncond if settings.uses_cfg else None, ref_latent, pose_features,
                      settings, on_step=report, refine=refiner, frame_inputs=frame_inputs)

    @staticmethod
    def _decode(net, latents, chunk) -> torch.Tensor:
        from ..models.svd.conditioning import decode_latents
        pieces = []
        for start in range(0, latents.shape[0], chunk):
            check_interrupt()
            pieces.append(decode_latents(net.vae, latents[start:start + chunk], chunk, net.vae_scaling_factor))
        return torch.cat(pieces).to(mm.intermediate_device())

    @staticmethod
    def _ui(net, frames, fps, face_id=False, refiner=None) -> dict:
        uint8 = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        ui = preview_ui(np.ascontiguousarray(uint8), fps=fps, prefix="marionette_svd")
        info = {"frames": int(frames.shape[0]), "model": net.animation, "tiny": net.tiny, "face_id": face_id}
        if refiner is not None and refiner.losses:
            info["face_refine"] = {"steps_refined": len(refiner.losses), "loss_first": refiner.losses[0][0],
                                   "loss_last": refiner.losses[-1][-1]}
        if net.tiny:
            info["warning"] = TINY_WARNING.format(
                diffusers=os.path.join(folder_paths.models_dir, "diffusers"),
                animation=os.path.join(folder_paths.models_dir, FOLDERS["animation"][0]))
        ui["marionette_svd"] = [info]
        return ui
