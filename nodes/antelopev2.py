"""insightface's antelopev2 pack for the nodes that read a face identity (ID Adapter Apply, VividPose
Guidance): where it is, its onnxruntime sessions held in one model-cache slot, and the reference as pixels."""
from __future__ import annotations

import os

import numpy as np
import torch

import folder_paths

from ..models.errors import MarionetteError
from .model_cache import SessionHolder, cached, file_key
from .model_paths import FOLDERS


def insightface_root() -> str:
    """The first registered 'insightface' folder that holds the antelopev2 pack (else the default one,
    so the error names where the files should go)."""
    from ..models.stableanimator.face_id import NEEDED_FILES, pack_folder
    for root in folder_paths.get_folder_paths("insightface"):
        if all(os.path.isfile(os.path.join(pack_folder(root), f)) for f in NEEDED_FILES):
            return root
    return os.path.join(folder_paths.models_dir, FOLDERS["insightface"][0])


def antelopev2_sessions(root: str):
    """The antelopev2 pack's onnxruntime sessions behind a ModelPatcher (a SessionHolder sized like the
    files), held while the files and providers stay the same; ComfyUI's unload drops them."""
    from ..models.stableanimator.face_id import FaceEmbedder, check_pack, default_providers
    folder = check_pack(root)
    providers = tuple(default_providers())
    on_gpu = providers[0] != "CPUExecutionProvider"
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".onnx"))
    return cached("antelopev2", (file_key(folder), providers),
                  lambda: SessionHolder(lambda: FaceEmbedder(root, providers=list(providers)).prepare(), on_gpu),
                  size=size, load_device=None if on_gpu else torch.device("cpu"))


def reference_uint8(reference: torch.Tensor) -> np.ndarray:
    """A one-frame IMAGE as the face detector's uint8 RGB pixels."""
    if reference.ndim != 4 or reference.shape[0] != 1 or reference.shape[-1] != 3:
        raise MarionetteError(f"The reference image must be one RGB frame; got shape {tuple(reference.shape)}.",
                              "Pick one frame with ImageFromBatch (or connect LoadReference).")
    pixels = (reference[0].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(pixels)
