"""StableAnimator's HJB face optimisation: inference-time refinement of the predicted clean latent.

At each refined denoising step i (start..end inclusive, 0-based over N steps) the sampler's denoised
estimate x0 [F, 4, h, w] is optimised by a fresh Adam (default betas, lr = lr0 · (1 − i/N)) for a few
iterations on

    loss = mean over frames with a face of |1 − cos(R100(crop_k(decode(x0))), R100(reference face))|

where decode is the SVD VAE (temporal decoder, chunks of `decode_chunk` frames), the decoded frames are
clamped to [-1, 1] as 8-bit output would be, crop_k is the frame's face box (inclusive pixel bounds)
bilinearly resized to 112² without alignment, and R100 is the ArcFace IResNet of `glintr100_torch.pth`.
The Euler step then uses the refined x0. This is the official `EulerDiscreteSchedulerPro.step` maths.

Face boxes follow the official reading of its 8-bit PNG masks: a pixel is face only where the mask is full
(255, i.e. a MASK value v with round(v·255) = 255); the box spans all such pixels. Soft edges do not count.

Precision: the decoded frames, crops and the cosine are computed in the VAE's / R100's own dtype, never
below float32 (the official code upcasts the decoded frames to float32), so a float64 run is float64
throughout and reproduces the official maths to rounding.

Differences from the official code (none changes the gradient):
- the loss is back-propagated one decode chunk at a time and the gradients summed before the Adam step,
  so memory holds one chunk's graph instead of all frames' (the official code runs out of memory on 24 GB);
  chunks are decoded independently in both, so the summed gradient equals the full one;
- frames without a face box are left out of the mean (the official script stops on them); chunks without
  any face are not decoded at all;
- the decoder runs in the VAE's dtype (the official HJB mode runs everything in float32; load the model
  in fp32 for that), with gradient checkpointing on by default as in the official HJB mode;
- masks of another size than the video are resized (nearest) to it; the official script requires masks
  at the video size.
"""
from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import MarionetteError
from ..svd.sampler import SamplerSettings
from .iresnet import FACE_SIZE

Box = tuple[int, int, int, int]  # (y_min, y_max, x_min, x_max), inclusive pixel bounds
# How the denoiser covers the video during an HJB run: "single" = one window of all frames, as the official
# HJB script (tile_size = number of frames); "tiles" = the sampler's own overlapping windows.
REFINE_WINDOWS = ("single", "tiles")


@dataclass(frozen=True)
class RefineSettings:
    """Defaults are StableAnimator's `command_op_infer.sh` (25 sampling steps)."""
    start_step: int = 0
    end_step: int = 20  # inclusive
    iterations: int = 3
    learning_rate: float = 0.1
    decode_chunk: int = 4
    gradient_checkpointing: bool = True

    def __post_init__(self):
        for name, low in (("start_step", 0), ("end_step", 0), ("iterations", 1), ("decode_chunk", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MarionetteError(f"HJB {name} must be an integer >= {low}, got {value!r}.",
                                      "Use the official values: steps 0..20 of 25, 3 iterations, chunk 4.")
        if self.end_step < self.start_step:
            raise MarionetteError(f"HJB end_step {self.end_step} is before start_step {self.start_step}.",
                                  "Set end_step >= start_step (official: 0..20, both inclusive).")
        if not isinstance(self.learning_rate, (int, float)) or not self.learning_rate > 0:
            raise MarionetteError(f"HJB learning rate must be positive, got {self.learning_rate!r}.",
                                  "Use 0.1, the official value (it decays linearly over the steps).")

    def step_learning_rate(self, step: int, steps: int) -> float:
        """lr0 · (1 − i/N): 0.1 at step 0 falling to 0.02 at step 20 of 25."""
        return float(self.learning_rate) * (1.0 - step / steps)

    def refines(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step


def refine_window(settings: SamplerSettings, window: str, frames: int) -> SamplerSettings:
    """The sampler settings of an HJB run over `frames` sampled frames: "single" sets the tile to all frames
    (one UNet window; the start noise is then drawn for every frame, as in the official HJB script),
    "tiles" keeps the sampler's tile size and overlap."""
    if window not in REFINE_WINDOWS:
        raise MarionetteError(f"Unknown HJB window {window!r}.", f"Use one of: {', '.join(REFINE_WINDOWS)}.")
    if window == "tiles":
        return settings
    tile = max(int(frames), 2)  # the sampler shrinks a tile longer than the video to the video
    return dataclasses.replace(settings, tile_size=tile, tile_overlap=min(settings.tile_overlap, tile - 1))


def face_pixels(mask: torch.Tensor) -> torch.Tensor:
    """Where a mask (values 0..1) is full: its 8-bit value is 255, the only value the official code counts
    (it reads PNG masks, divides by 255 and keeps pixels equal to 1). Soft edges are not face."""
    return torch.round(mask.float().clamp(0, 1) * 255) == 255


def face_box(mask: torch.Tensor) -> Box | None:
    """Bounding box of the mask's full pixels (`face_pixels`) [H, W] as inclusive bounds, or None."""
    if mask.ndim != 2:
        raise MarionetteError(f"A face mask must be [H, W], got {tuple(mask.shape)}.", "Pass one mask per frame.")
    ys, xs = torch.nonzero(face_pixels(mask), as_tuple=True)
    if ys.numel() == 0:
        return None
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def face_boxes(masks: torch.Tensor, size: tuple[int, int]) -> list[Box | None]:
    """Per-frame boxes of a MASK batch [F, H, W] at the video `size` = (H, W): the full pixels of each mask,
    read at its own resolution, resized (nearest) to the video when the sizes differ."""
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise MarionetteError(f"Face masks must be a [frames, H, W] batch, got {tuple(masks.shape)}.",
                              "Connect a MASK batch with one face mask per output frame.")
    full = face_pixels(masks).float()
    if tuple(full.shape[-2:]) != tuple(size):
        full = F.interpolate(full[:, None], size=tuple(size), mode="nearest")[:, 0]
    return [face_box(mask) for mask in full]


def crop_faces(frames: torch.Tensor, boxes: list[Box]) -> torch.Tensor:
    """frames [N, 3, H, W] -> face crops [N, 3, 112, 112], bilinear (align_corners=False), no alignment."""
    crops = [F.interpolate(frame[None, :, y0:y1 + 1, x0:x1 + 1], size=(FACE_SIZE, FACE_SIZE), mode="bilinear",
                           align_corners=False) for frame, (y0, y1, x0, x1) in zip(frames, boxes)]
    return torch.cat(crops)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """`dtype`, raised to float32 where it is narrower (the official code upcasts decoded frames to float32
    and runs the HJB R100 in float32); float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def reference_embedding(embedder: torch.nn.Module, image: torch.Tensor, box: Box) -> torch.Tensor:
    """The reference face's embedding [D]: image [3, H, W] (or [H, W, 3]) in 0..1, its face box.
    Returned in the R100's dtype, at least float32."""
    if image.ndim != 3:
        raise MarionetteError(f"The reference must be one image, got {tuple(image.shape)}.", "Pass one frame.")
    if image.shape[0] != 3:
        image = image.permute(2, 0, 1)
    parameter = next(embedder.parameters())
    work = working_dtype(parameter.dtype)
    pixels = (image.to(parameter.device, work) - 0.5) / 0.5
    with torch.no_grad():
        return embedder(crop_faces(pixels[None], [box]).to(parameter.dtype))[0].to(work)


def decode_pixels(vae, latents: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """UNet-space latents [n, 4, h, w] -> frames [n, 3, H, W] in [-1, 1], one temporal-decoder call, with
    gradients, as the official HJB step post-processes them: upcast to at least float32, clamped to the 8-bit
    range (x/2 + 0.5 in 0..1, no rounding), back to [-1, 1]. The clamp gives saturated pixels no gradient."""
    parameter = next(vae.parameters())
    scaled = latents.to(parameter.device, torch.promote_types(latents.dtype, parameter.dtype)) * (1 / scaling_factor)
    frames = vae.decode(scaled.to(parameter.dtype), num_frames=latents.shape[0]).sample
    frames = frames.to(working_dtype(frames.dtype))
    return ((frames / 2 + 0.5).clamp(0, 1) - 0.5) / 0.5


def with_trainable_weights(module: torch.nn.Module) -> torch.nn.Module:
    """`module`, or a copy of it when its tensors were made under inference mode (ComfyUI runs nodes
    that way, and autograd cannot save such tensors for the backward pass)."""
    tensors = list(module.parameters()) + list(module.buffers())
    if not any(t.is_inference() for t in tensors):
        return module
    with torch.inference_mode(False):
        return copy.deepcopy(module)


@contextmanager
def _checkpointing(vae, enabled: bool):
    """Gradient checkpointing on a diffusers VAE for the duration (restored after: the VAE may be shared)."""
    switchable = enabled and hasattr(vae, "enable_gradient_checkpointing") and not vae.is_gradient_checkpointing
    if switchable:
        vae.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if switchable:
            vae.disable_gradient_checkpointing()


@dataclass
class FaceRefiner:
    """The HJB hook for `sampler.sample(refine=...)`: `refiner(x0, step, steps)` returns x0 refined at the
    configured steps and x0 itself at the others.

    `boxes` has one entry per sampled frame (None = no face there; MimicMotion's anchor frame 0 gets None).
    `losses` collects, per refined step, the loss before each Adam update. `check()` runs before every
    iteration (cancel: raise there)."""
    embedder: torch.nn.Module
    reference: torch.Tensor  # [D] reference face embedding
    boxes: list[Box | None]
    vae: torch.nn.Module
    scaling_factor: float
    settings: RefineSettings = field(default_factory=RefineSettings)
    losses: list[list[float]] = field(default_factory=list)
    check: Callable[[], None] | None = None

    def __post_init__(self):
        if not any(box is not None for box in self.boxes):
            raise MarionetteError("No frame has a face box for the HJB face refinement.",
                                  "Check the target face masks (or the pose's face keypoints), or remove the "
                                  "HJB Face Refine input from the sampler.")
        self._embedder = with_trainable_weights(self.embedder)
        self._vae = with_trainable_weights(self.vae)

    def __call__(self, x0: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        if not self.settings.refines(step):
            return x0
        if x0.shape[0] != len(self.boxes):
            raise MarionetteError(f"The HJB refiner has {len(self.boxes)} face boxes for {x0.shape[0]} frames.",
                                  "Give one face mask (or pose frame) per output frame.")
        checkpointing = _checkpointing(self._vae, self.settings.gradient_checkpointing)
        with torch.inference_mode(False), torch.enable_grad(), checkpointing:
            latent = x0.detach().clone().requires_grad_(True)
            optimiser = torch.optim.Adam([latent], lr=self.settings.step_learning_rate(step, steps))
            history = []
            for _ in range(self.settings.iterations):
                if self.check is not None:
                    self.check()
                optimiser.zero_grad()
                history.append(self._backward(latent))
                optimiser.step()
        self.losses.append(history)
        return latent.detach().to(x0.dtype)

    def _backward(self, latent: torch.Tensor) -> float:
        """Accumulate d loss / d latent chunk by chunk; returns the loss value."""
        faces = sum(box is not None for box in self.boxes)
        parameter = next(self._embedder.parameters())
        work = working_dtype(parameter.dtype)  # the cosine's dtype: the R100's, at least float32
        reference = self.reference.to(parameter.device, work)
        total = 0.0
        chunk = self.settings.decode_chunk
        for start in range(0, latent.shape[0], chunk):
            boxes = self.boxes[start:start + chunk]
            keep = [k for k, box in enumerate(boxes) if box is not None]
            if not keep:
                continue
            pixels = decode_pixels(self._vae, latent[start:start + chunk], self.scaling_factor)[keep]
            crops = crop_faces(pixels, [boxes[k] for k in keep])  # in the decoded frames' dtype, as official
            embeddings = self._embedder(crops.to(parameter.device, parameter.dtype)).to(work)
            cosine = F.cosine_similarity(embeddings, reference.expand_as(embeddings), dim=1, eps=1e-8)
            loss = (1 - cosine).abs().sum() / faces
            loss.backward()
            total += loss.detach().item()
        return total
