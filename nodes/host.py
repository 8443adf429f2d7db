"""The few ComfyUI services our nodes use, in one place: progress, cancel, previews, devices."""
from __future__ import annotations

import os
import uuid

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils
import folder_paths
from PIL import Image

from ..models.core.dtypes import DTYPES
from .lowvram import place_leftovers


FACE_TOKENS_KEY = "marionette_face_tokens"  # model_options entry of an SVD model clone: StableAnimator's identity
DTYPE_CHOICES = ["auto", "fp16", "bf16", "fp32"]


def resolve_dtype(choice: str) -> torch.dtype:
    """A dtype input's value as a torch dtype; "auto" is ComfyUI's UNet choice (fp32 on the CPU)."""
    if choice in DTYPES:
        return DTYPES[choice]
    if mm.get_torch_device().type == "cpu":
        return torch.float32
    dtype = mm.unet_dtype()
    return dtype if dtype in DTYPES.values() else torch.float16


def load_on_device(*patchers, memory_required: float = 0) -> None:
    """Let ComfyUI make room and move the models, fully or, when VRAM is short, partially (ComfyUI's
    low-VRAM mode; see nodes/lowvram.py); then put what a partial load leaves behind on the device.
    `memory_required`: bytes the work needs besides the weights (activations), kept free by ComfyUI."""
    mm.load_models_gpu(list(patchers), memory_required=memory_required)
    for patcher in patchers:
        place_leftovers(patcher.model, patcher.load_device)


def unet_memory_required(batch: int, height: int, width: int, dtype: torch.dtype, factor: float = 2.0) -> float:
    """Activation memory (bytes) of one UNet call on `batch` images of height x width pixels: ComfyUI's own
    estimate for its UNets (BaseModel.memory_required; memory_usage_factor 2.0 for SVD, 1.0 for SD1.5)."""
    area = batch * (height // 8) * (width // 8)
    return area * torch.finfo(dtype).bits / 8 * 0.01 * factor * 1024 * 1024


class Progress:
    """Progress bar + cancel check for a loop of `total` steps; call it as on_progress(done, total)."""

    def __init__(self, total: int, node_id: str | None = None):
        try:
            self.bar = comfy.utils.ProgressBar(total, node_id=node_id)
        except TypeError:  # 2024 hosts: no node_id
            self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)


def check_interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()


def to_image_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] → ComfyUI IMAGE float [B,H,W,3] on the intermediate device."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(255.0)
    return t.to(mm.intermediate_device())


def to_mask_tensor(masks: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)).to(mm.intermediate_device())


PREVIEW_MAX_FRAMES = 64
PREVIEW_MAX_SIDE = 384


def preview_ui(frames: np.ndarray, fps: float = 8.0, prefix: str = "marionette") -> dict:
    """Writes uint8 frames as an animated WebP (a still for one frame) in ComfyUI's temp folder.

    Returns the `ui` dict both frontends display. Long clips are subsampled and frames shrunk so
    previews stay light.
    """
    if len(frames) == 0:
        return {"images": []}
    step = max(1, int(np.ceil(len(frames) / PREVIEW_MAX_FRAMES)))
    images = [Image.fromarray(f) for f in frames[::step]]
    scale = PREVIEW_MAX_SIDE / max(images[0].size)
    if scale < 1:
        size = (max(1, round(images[0].width * scale)), max(1, round(images[0].height * scale)))
        images = [im.resize(size, Image.BILINEAR) for im in images]
    name = f"{prefix}_{uuid.uuid4().hex[:12]}.webp"
    path = os.path.join(folder_paths.get_temp_directory(), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    duration = int(1000 * step / max(fps, 1e-3))
    images[0].save(path, save_all=len(images) > 1, append_images=images[1:], duration=duration, loop=0,
                   quality=80, method=4)
    return {"images": [{"filename": name, "subfolder": "", "type": "temp"}], "animated": (len(images) > 1,)}
