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


def sampler_settings(net: VividPoseAnimation, frames: int, steps: int, seed: int, cfg: float) -> SamplerSettings:
    """The sampler as the model was trained: its window length, micro-conditioning, a CFG ramp 1 -> `cfg`."""
    extras = net.model.config.extras
    tile = min(int(net.model.config.unet.get("num_frames", 8)), frames)
    return SamplerSettings(steps=steps, cfg_min=1.0, cfg_max=cfg, tile_size=tile, tile_overlap=max(1, tile // 2),
                           seed=seed, fps=int(extras.get("fps", 7)),
                           noise_aug_strength=float(extras.get("noise_aug_strength", 0.02)))


def reconstruct_clip(net: VividPoseAnimation, clip: dict, frames: int, steps: int = STEPS, seed: int = 0,
                     cfg: float = 3.0) -> torch.Tensor:
    """Self-reconstruction of a loaded clip (`dataset.load_clip`): reference = its frame 0, the clip's own
    renders and skeletons; its first `frames` frames as IMAGE [F, H, W, 3] on the CPU."""
    count = min(frames, int(clip["frames"].shape[0]))
    unit = lambda x: x[:count].float() / 255.0  # noqa: E731
    settings = sampler_settings(net, count, steps, seed, cfg)
    with torch.no_grad():
        result = animate_vividpose(net, unit(clip["frames"][:1]), unit(clip["skeleton"]), unit(clip["render"]),
                                   settings, device=next(net.model.parameters()).device)
    return result.frames.float().cpu()


def trainer_net(plain) -> VividPoseAnimation:
    """The training module's parts as the pipeline's container (no copies)."""
    model = plain.model
    extras = model.config.extras
    return VividPoseAnimation(model, plain.vae, plain.image_encoder, plain.scaling, extras.get("clip_mean"),
                              extras.get("clip_std"), next(model.parameters()).dtype, tiny=False)


def validation_video(plain, config, folder: str, step: int, frames: int = 16) -> str:
    import cv2
    from .dataset import load_clip
    name = validation_clip(config.data, config.validation_clip)
    clip = load_clip(config.data, name)
    generated = reconstruct_clip(trainer_net(plain), clip, frames)
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
