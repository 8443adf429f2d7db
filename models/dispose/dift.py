"""DisPose's keypoint correspondence: DIFT features of the reference image and the point-feature maps that the
ControlNet's PointAdapter consumes.

What the official inference does (lihxxx/DisPose `mimicmotion/utils/dift_utils.py`, `inference_ctrl.py`,
`pipelines/pipeline_ctrl.py`, `modules/point_adapter.py`), reproduced here:
1. DIFT. The reference image, cropped to the working resolution, goes in as pixels in [-1, 1]. The SD1.5 VAE
   encodes it; a posterior *sample* (not the mean) is scaled by 0.18215. The latent is noised to t = 261 with
   SD1.5's DDIM schedule (`add_noise`). The UNet runs with the CLIP text embedding of "photo of a human"
   (last hidden state, 77 tokens). The feature is the output of `up_blocks[1]` after its upsampler: 1280
   channels at H/16 x W/16. This is done for a batch of 8 copies, each with its own posterior sample and
   noise, and the result is the batch mean. The official noise is unseeded. Ours comes from one CPU generator
   seeded with `seed`: first the (E, 4, h, w) posterior draws, then the (E, 4, h, w) noise.
2. Reference point embeddings. The feature map is bilinearly resized (align_corners=False) to image size
   *with height and width swapped*: the official code unpacks (B, C, H, W) as (b, _, w, h). Each of the 18
   body keypoints of the reference is read at (row int(y*W), column int(x*H)), clamped, with x, y normalised
   to [0, 1]. That is the same place in normalised terms, on a different integer grid. Keypoints that are
   not visible get zeros.
3. Point-feature maps. For every frame (the reference pose included) and keypoint k, the reference embedding
   of k goes into the 1/16 grid cell (int(x*W//16), int(y*H//16)) of the frame's own keypoint k; cells are
   clamped to the grid. A keypoint is skipped when it is not visible in that frame or when either coordinate is
   negative. Embeddings that share a cell are averaged, and the mask is 1 in every filled cell. Officially a
   reference keypoint that is not visible still places its zero embedding (the MLP bias then makes it non-zero);
   `mask_missing_reference=True` leaves such points out instead.

Visibility is DWPose's: score > 0.3 (`pose.types.VISIBLE`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import MarionetteError
from ..pose.types import BODY, VISIBLE, PoseFrame

DIFT_TIMESTEP = 261
DIFT_ENSEMBLE = 8
DIFT_BLOCK = 1  # UNet up block whose output is the feature
DIFT_PROMPT = "photo of a human"
# CLIP ViT-L/14 BPE ids of DIFT_PROMPT as SD1.5's tokenizer gives them: <|startoftext|>, photo</w>, of</w>, a</w>,
# human</w>, <|endoftext|>, and <|endoftext|> (SD1.5's pad token) up to 77 tokens.
PROMPT_TOKEN_IDS = (49406, 1125, 539, 320, 2751) + (49407,) * 72
# SD1.5 scheduler_config.json: scaled_linear betas from 0.00085 to 0.012 over 1000 training steps.
SD15_BETA_START, SD15_BETA_END, SD15_TRAIN_STEPS = 0.00085, 0.012, 1000
SD15_SCALING_FACTOR = 0.18215
GRID = 16  # pixels per point-map cell (the PointAdapter's first level)


class ReferencePoints(NamedTuple):
    embeddings: torch.Tensor  # (18, C) float32; zeros where the reference keypoint is not visible
    visible: torch.Tensor  # (18,) bool


class PointMaps(NamedTuple):
    features: torch.Tensor  # (F, C, H // 16, W // 16) float32: averaged reference embeddings at target cells
    mask: torch.Tensor  # (F, H // 16, W // 16) float32: 1 where at least one keypoint landed


class _Captured(Exception):
    """Carries the up block's output out of the UNet forward, skipping the layers after it."""

    def __init__(self, output: torch.Tensor):
        super().__init__("feature captured")
        self.output = output


# -------------------------------------------------------------------------------------------- prompt
def prompt_embedding(text_encoder: nn.Module, token_ids: Sequence[int] = PROMPT_TOKEN_IDS) -> torch.Tensor:
    """The CLIP text encoder's last hidden state (final layer norm applied) for `token_ids`: (1, 77, D), in
    the encoder's dtype and on its device. This is `encode_prompt` without an attention mask, as SD1.5 uses it."""
    parameter = next(text_encoder.parameters())
    vocab = text_encoder.config.vocab_size
    if max(token_ids) >= vocab or min(token_ids) < 0:
        raise MarionetteError(f"Token ids outside the text encoder's vocabulary of {vocab}.",
                              "Use SD1.5's CLIP text encoder (vocabulary 49408).")
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=parameter.device)
    with torch.no_grad():
        output = text_encoder(input_ids=ids)
    hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
    return hidden.to(parameter.dtype)


# ---------------------------------------------------------------------------------------------- DIFT
def sd15_alphas_cumprod() -> torch.Tensor:
    """SD1.5's DDIM alphas_cumprod (1000,), float32, computed as diffusers does."""
    betas = torch.linspace(SD15_BETA_START ** 0.5, SD15_BETA_END ** 0.5, SD15_TRAIN_STEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _image_batch(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-3] != 3 \
            or (image.ndim == 4 and image.shape[0] != 1):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise MarionetteError(f"The DIFT reference image must be one RGB image (3, H, W) or (1, 3, H, W); got {shape}.",
                              "Pass the reference image, channels first, values in [0, 1].")
    height, width = image.shape[-2:]
    if height % 8 or width % 8 or height < 16 or width < 16:
        raise MarionetteError(f"The DIFT reference image is {width}x{height}; width and height must be multiples "
                              "of 8 (at least 16).", "Crop or resize the reference to the working resolution, "
                              "whose sides are multiples of 64 in DisPose.")
    return image.reshape(1, 3, height, width)


def _up_block_output(unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                     block: int) -> torch.Tensor:
    """The output of `unet.up_blocks[block]` in the UNet's own forward, which stops right after it."""
    def capture(_module, _inputs, output):
        raise _Captured(output)

    handle = unet.up_blocks[block].register_forward_hook(capture)
    try:
        unet(sample, timestep, encoder_hidden_states=context, return_dict=False)
    except _Captured as captured:
        return captured.output
    finally:
        handle.remove()
    raise MarionetteError("The UNet finished without running its up block "
                          f"{block}.", "Use an SD1.5 UNet2DConditionModel.")


def dift_features(unet: nn.Module, vae: nn.Module, text_embedding: torch.Tensor, image: torch.Tensor, *,
                  t: int = DIFT_TIMESTEP, ensemble: int = DIFT_ENSEMBLE, seed: int = 0, chunk: int | None = None,
                  scaling_factor: float | None = None, block: int = DIFT_BLOCK) -> torch.Tensor:
    """DisPose's DIFT feature of `image`. Returns (1, C, H/16, W/16) in float32 on the UNet's device (C = 1280
    for SD1.5).

    `image`: (3, H, W) or (1, 3, H, W) RGB in [0, 1] at the working resolution (sides multiples of 8).
    `text_embedding`: (1, 77, 768) from `prompt_embedding`. Each module runs in its own dtype and on its own
    device. `chunk`: ensemble members per UNet call (all at once by default); it saves memory without changing
    the result beyond float rounding. `scaling_factor` defaults to the VAE config's value."""
    pixels = _image_batch(image)
    if not 0 <= int(t) < SD15_TRAIN_STEPS:
        raise MarionetteError(f"DIFT timestep {t} is outside 0..{SD15_TRAIN_STEPS - 1}.", "DisPose uses t = 261.")
    if ensemble < 1 or (chunk is not None and chunk < 1):
        raise MarionetteError(f"DIFT needs ensemble >= 1 and chunk >= 1 (got {ensemble}, {chunk}).",
                              "DisPose averages 8 noisy copies.")
    if text_embedding.ndim != 3 or text_embedding.shape[0] != 1:
        raise MarionetteError(f"The text embedding must be (1, tokens, width); got {list(text_embedding.shape)}.",
                              "Use prompt_embedding(text_encoder).")
    vae_parameter, unet_parameter = next(vae.parameters()), next(unet.parameters())
    scale = float(scaling_factor if scaling_factor is not None
                  else getattr(vae, "config", {}).get("scaling_factor", SD15_SCALING_FACTOR))
    with torch.no_grad():
        posterior = vae.encode(pixels.to(vae_parameter.device, vae_parameter.dtype) * 2 - 1).latent_dist
        mean, std = posterior.mean, posterior.std  # one encode: the 8 official copies encode identically
        generator = torch.Generator("cpu").manual_seed(int(seed))
        draws = (ensemble,) + tuple(mean.shape[1:])
        posterior_noise = torch.randn(draws, generator=generator).to(mean.device, mean.dtype)
        noise = torch.randn(draws, generator=generator).to(mean.device, mean.dtype)
        latents = (mean + std * posterior_noise) * scale
        # diffusers' add_noise: the schedule value is cast to the latents' dtype before the square roots
        alpha = sd15_alphas_cumprod().to(latents.device, latents.dtype)[int(t)]
        noisy = alpha ** 0.5 * latents + (1 - alpha) ** 0.5 * noise
        noisy = noisy.to(unet_parameter.device, unet_parameter.dtype)
        context = text_embedding.to(unet_parameter.device, unet_parameter.dtype)
        timestep = torch.tensor(int(t), dtype=torch.long, device=unet_parameter.device)
        total = None
        for start in range(0, ensemble, chunk or ensemble):
            part = noisy[start:start + (chunk or ensemble)]
            feature = _up_block_output(unet, part, timestep, context.expand(len(part), -1, -1), block)
            summed = feature.float().sum(dim=0, keepdim=True)
            total = summed if total is None else total + summed
    return total / ensemble


# ------------------------------------------------------------------------------------------ keypoints
def body_keypoints(frames: Sequence[PoseFrame]) -> tuple[np.ndarray, np.ndarray]:
    """The first person's 18 body keypoints of each frame, normalised by the frame's canvas: (F, 18, 2) float64
    xy in [0, 1] (may lie outside after alignment) and (F, 18) visibility (score > 0.3). A frame without people
    has no visible keypoints."""
    xy = np.zeros((len(frames), BODY, 2), np.float64)
    visible = np.zeros((len(frames), BODY), bool)
    for index, frame in enumerate(frames):
        if frame.num_people == 0:
            continue
        body = frame.body[0].astype(np.float64)
        xy[index] = body[:, :2] / np.array([frame.width, frame.height], np.float64)
        visible[index] = body[:, 2] > VISIBLE
    return xy, visible


def _keypoint_arrays(keypoints, visible, frames: bool) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(keypoints, np.float64)
    seen = np.asarray(visible, bool)
    shape = ("F, " if frames else "") + f"{BODY}, 2"
    if xy.shape[-2:] != (BODY, 2) or xy.ndim != (3 if frames else 2) or seen.shape != xy.shape[:-1]:
        raise MarionetteError(f"Keypoints must be ({shape}) normalised xy with visibility ({shape[:-3]}); got "
                              f"{list(xy.shape)} and {list(seen.shape)}.",
                              "Use body_keypoints(frames) to get them from pose frames.")
    return xy, seen & np.isfinite(xy).all(axis=-1)


def _bilinear_source(index: np.ndarray, in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper source indices and the upper weight of output `index` when resizing `in_size` to
    `out_size` bilinearly with align_corners=False (PyTorch's rule: negative source positions clamp to 0)."""
    source = np.maximum((index + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, source - low


def reference_point_embeddings(features: torch.Tensor, keypoints, visible, *, height: int, width: int
                               ) -> ReferencePoints:
    """The DIFT feature under each of the reference's 18 body keypoints, read as the official pipeline reads it
    (module docstring, step 2) but without building the image-sized feature map.

    `features`: (1, C, h, w) or (C, h, w) from `dift_features`; `keypoints`: (18, 2) xy normalised by the
    reference's `width` x `height`; `visible`: (18,) bool."""
    if features.ndim not in (3, 4) or (features.ndim == 4 and features.shape[0] != 1):
        raise MarionetteError(f"DIFT features must be (1, C, h, w); got {list(features.shape)}.",
                              "Pass the output of dift_features.")
    feature = features.reshape(features.shape[-3:]).float()
    xy, seen = _keypoint_arrays(keypoints, visible, frames=False)
    rows_out, cols_out = width, height  # the official (w, h) swap
    rows = np.clip(np.trunc(xy[:, 1] * rows_out), 0, rows_out - 1)
    cols = np.clip(np.trunc(xy[:, 0] * cols_out), 0, cols_out - 1)
    r0, r1, fr = _bilinear_source(np.nan_to_num(rows), feature.shape[1], rows_out)
    c0, c1, fc = _bilinear_source(np.nan_to_num(cols), feature.shape[2], cols_out)
    fr, fc = (torch.as_tensor(v, dtype=torch.float32, device=feature.device)[:, None] for v in (fr, fc))
    take = lambda r, c: feature[:, torch.as_tensor(r), torch.as_tensor(c)].T  # noqa: E731  (18, C)
    values = ((1 - fr) * ((1 - fc) * take(r0, c0) + fc * take(r0, c1))
              + fr * ((1 - fc) * take(r1, c0) + fc * take(r1, c1)))
    mask = torch.as_tensor(seen, device=feature.device)
    return ReferencePoints(values * mask[:, None], mask)


def point_feature_maps(reference: ReferencePoints, keypoints, visible, *, height: int, width: int,
                       mask_missing_reference: bool = False) -> PointMaps:
    """The PointAdapter's input for F frames (module docstring, step 3): reference embeddings placed at each
    frame's keypoints on the (H // 16, W // 16) grid, averaged per cell, and the mask of filled cells.

    `keypoints`: (F, 18, 2) xy normalised by `width` x `height` (frame 0 is the reference pose in DisPose's
    windows); `visible`: (F, 18) bool."""
    xy, seen = _keypoint_arrays(keypoints, visible, frames=True)
    grid_h, grid_w = height // GRID, width // GRID
    if grid_h < 1 or grid_w < 1 or height % GRID or width % GRID:
        raise MarionetteError(f"Point maps need a width and height that are multiples of {GRID}; got {width}x{height}.",
                              "Use the working resolution (multiples of 64 in DisPose).")
    embeddings = reference.embeddings.float()
    placed = seen & (xy.min(axis=-1) >= 0)
    if mask_missing_reference:
        placed &= reference.visible.cpu().numpy()[None, :]
    frame_index, point_index = np.nonzero(placed)
    cols = np.clip(np.trunc(xy[frame_index, point_index, 0] * grid_w), 0, grid_w - 1).astype(np.int64)
    rows = np.clip(np.trunc(xy[frame_index, point_index, 1] * grid_h), 0, grid_h - 1).astype(np.int64)
    device = embeddings.device
    cells = torch.as_tensor(frame_index * grid_h * grid_w + rows * grid_w + cols, device=device)
    frames = len(xy)
    sums = torch.zeros(frames * grid_h * grid_w, embeddings.shape[1], device=device)
    counts = torch.zeros(frames * grid_h * grid_w, device=device)
    sums.index_add_(0, cells, embeddings[torch.as_tensor(point_index, device=device)])
    counts.index_add_(0, cells, torch.ones(len(cells), device=device))
    averaged = sums / counts.clamp(min=1)[:, None]
    features = averaged.reshape(frames, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()
    return PointMaps(features, (counts > 0).float().reshape(frames, grid_h, grid_w))
