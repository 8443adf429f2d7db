"""Model folders Marionette registers with ComfyUI, and file look-up with actionable errors."""
from __future__ import annotations

import os

import folder_paths

from ..models.errors import MarionetteError

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_MEDIAPIPE = os.path.join(PACK_DIR, "models", "mediapipe")

# name → (default folder under ComfyUI/models, extensions)
FOLDERS = {
    "dwpose": ("dwpose", {".onnx"}),
    "mediapipe": ("mediapipe", {".tflite"}),
    "smplx": ("smplx", {".npz", ".pkl"}),
    "animation": ("animation", {".pth", ".pt", ".bin", ".ckpt", ".safetensors"}),  # MimicMotion, StableAnimator
    "insightface": ("insightface", {".onnx"}),  # root of insightface packs: models/antelopev2/*.onnx
    "dispose": ("dispose", {".pth", ".tar", ".pt", ".ckpt", ".safetensors"}),  # DisPose.pth, CMP checkpoint
}


ANIMATION_SOURCES = {
    "mimicmotion": "Hugging Face 'tencent/MimicMotion' (MimicMotion_1-1.pth), or the fp16 repack "
                   "MimicMotion-fp16.safetensors from 'Kijai/MimicMotion_pruned'",
    "stableanimator": "the 'Animation' folder of Hugging Face 'FrancisRing/StableAnimator' "
                      "(unet.pth with pose_net.pth beside it)",
}


def diffusers_folders() -> list[str]:
    """Folder names in the 'diffusers' model folders (SVD-xt, SD1.5, ...)."""
    found = set()
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            found.update(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return sorted(found)


def _controlnet_aux_dwpose_dirs() -> list[str]:
    """Where comfyui_controlnet_aux users already keep yolox_l.onnx / dw-ll_ucoco_384.onnx."""
    roots = [os.environ.get("AUX_ANNOTATOR_CKPTS_PATH", "")]
    for nodes_dir in folder_paths.get_folder_paths("custom_nodes"):
        roots.append(os.path.join(nodes_dir, "comfyui_controlnet_aux", "ckpts"))
    subdirs = ("yzd-v/DWPose", "hr16/yolox-onnx", "hr16/UnJIT-DWPose")
    return [os.path.join(r, s) for r in roots if r for s in subdirs]


def register_folders() -> None:
    """Adds our folders, merging with keys a user's extra_model_paths.yaml may already have made."""
    # Anny builds a ~800 MB data cache on first use: keep it with the models, not in the home folder
    os.environ.setdefault("ANNY_CACHE_DIR", os.path.join(folder_paths.models_dir, "anny"))
    extra = {
        "dwpose": [os.path.join(folder_paths.models_dir, "DWPose")] + _controlnet_aux_dwpose_dirs(),
        "mediapipe": [EMBEDDED_MEDIAPIPE],   # searched last: a user's own copy wins
        "smplx": [],
        "animation": [],
        "insightface": [],
        "dispose": [],
    }
    for name, (sub, exts) in FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, sub)
        dirs, old_exts = folder_paths.folder_names_and_paths.get(name, ([], set()))
        dirs = list(dirs)
        for d in [default] + extra[name]:
            if d not in dirs:
                dirs.append(d)
        folder_paths.folder_names_and_paths[name] = (dirs, set(old_exts) | exts)


def model_choices(folder: str, official: tuple[str, ...]) -> list[str]:
    """Files present in `folder`, with the official names always offered (checked at run time)."""
    present = folder_paths.get_filename_list(folder)
    return list(official) + sorted(f for f in present if f not in official)


def require_model(folder: str, filename: str, where_to_get: str, alternative: str = "") -> str:
    """Full path of a model file, or an error naming the file, the folder and where to get it (and an
    `alternative` that needs no file, when there is one)."""
    path = folder_paths.get_full_path(folder, filename)
    if path and os.path.isfile(path):
        return path
    default = os.path.join(folder_paths.models_dir, FOLDERS[folder][0])
    raise MarionetteError(f"Model file '{filename}' was not found in the '{folder}' model folders.",
                          f"Download {filename} ({where_to_get}) and put it into {default} "
                          f"(or a folder listed for '{folder}' in extra_model_paths.yaml){alternative}.")


def mediapipe_dir(filenames: tuple[str, ...]) -> str:
    """The folder holding all of `filenames`: a user's ComfyUI/models/mediapipe, else the bundled one."""
    for d in folder_paths.get_folder_paths("mediapipe"):
        if all(os.path.isfile(os.path.join(d, f)) for f in filenames):
            return d
    missing = [f for f in filenames if not os.path.isfile(os.path.join(EMBEDDED_MEDIAPIPE, f))]
    raise MarionetteError(f"Embedded MediaPipe models are missing: {', '.join(missing)}.",
                          f"Reinstall Marionette (the files ship in {EMBEDDED_MEDIAPIPE}) "
                          "or copy them from the mediapipe==0.10.14 wheel into ComfyUI/models/mediapipe.")


SMPLX_SOURCE = "the SMPL-X website (smpl-x.is.tue.mpg.de), under the SMPL-X licence, after registering"


def smplx_dir(gender: str) -> str:
    """The folder holding SMPLX_<GENDER>.npz/.pkl (also found in an `smplx/` subfolder)."""
    name = f"SMPLX_{gender.upper()}"
    for candidate in (f"{name}.npz", f"{name}.pkl", f"smplx/{name}.npz", f"smplx/{name}.pkl"):
        path = folder_paths.get_full_path("smplx", candidate)
        if path and os.path.isfile(path):
            return os.path.dirname(path)
    default = os.path.join(folder_paths.models_dir, "smplx")
    raise MarionetteError(f"SMPL-X model file '{name}.npz' (or .pkl) was not found in the 'smplx' model folders.",
                          f"Download it from {SMPLX_SOURCE}, and put {name}.npz into {default}; or use the "
                          "embedded Anny body model, which needs no download.")
