"""Validation videos during training: the model (EMA weights) animates one clip of the dataset from its
first frame along the clip's own poses; truth | generated side by side as an mp4 and a PNG strip."""
from __future__ import annotations

import os

import numpy as np
import torch

from ..pipelines.vividpose import VividPoseAnimation, animate_vividpose
from ..svd.sampler import SamplerSettings

STEPS = 10  # sampler steps: enough to see the motion, cheap enough to run often


def validation_clip(data: str, wanted: str = "") -> str:
    from .dataset import read_index
    index = read_index(data)
    if wanted:
        return wanted
    held = [c for c in index["clips"] if index.get("splits", {}).get(c, "train") != "train"]
    return (held or index["clips"])[0]


def animate_clip(plain, config, clip: dict, frames: int, steps: int = STEPS, seed: int = 0) -> torch.Tensor:
    """Self-reconstruction of a loaded clip: reference = its frame 0, the clip's own renders and skeletons;
    returns IMAGE [F, H, W, 3]."""
    model = plain.model
    dtype = next(model.parameters()).dtype
    net = VividPoseAnimation(model, plain.vae, plain.image_encoder, plain.scaling, model.config.extras.get(
        "clip_mean"), model.config.extras.get("clip_std"), dtype, tiny=False)
    unit = lambda x: x[:frames].float() / 255.0  # noqa: E731
    settings = SamplerSettings(steps=steps, tile_size=min(model.config.unet["num_frames"], frames),
                               tile_overlap=max(1, min(model.config.unet["num_frames"], frames) // 2), seed=seed,
                               noise_aug_strength=config.noise_aug_strength)
    device = next(model.parameters()).device
    result = animate_vividpose(net, unit(clip["frames"][:1]), unit(clip["skeleton"]), unit(clip["render"]),
                               settings, device=device)
    return result.frames


def validation_video(plain, config, folder: str, step: int, frames: int = 16) -> str:
    import cv2
    from .dataset import load_clip
    name = validation_clip(config.data, config.validation_clip)
    clip = load_clip(config.data, name)
    generated = animate_clip(plain, config, clip, frames)
    truth = clip["frames"][: generated.shape[0]].numpy()
    pictures = np.concatenate([truth, (generated.cpu().numpy() * 255).round().astype(np.uint8)], axis=2)
    path = os.path.join(folder, f"vividpose_{step:06d}.mp4")
    height, width = pictures.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 8, (width, height))
    for picture in pictures:
        writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    writer.release()
    strip = np.concatenate(list(pictures[:: max(1, len(pictures) // 4)]), axis=1)
    cv2.imwrite(path[:-4] + ".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    return path
