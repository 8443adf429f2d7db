"""Self-reconstruction evaluation of a VividPose checkpoint on a prepared dataset's clips.

Per clip: the reference is its first frame, the driving poses are its own renders and skeletons, the
ground truth its frames. Compared methods: the model; "copy reference" (frame 0 repeated); "untrained"
(the same architecture at its training initialisation, with the same frozen autoencoder). Metrics from
`models.evaluation` (L1, PSNR, SSIM; inside / outside the person mask when the dataset has masks),
frame 0 (the reference itself) left out.

    python -m models.training evaluate --model FILE --data DATA [--split heldout] [--frames 16]
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..evaluation.metrics import evaluate_video
from ..pipelines.vividpose import load_vividpose_animation
from .dataset import ClipDataset, load_clip
from .validation import reconstruct_clip

METHODS = ("model", "copy reference", "untrained")


def untrained_like(net, seed: int = 0):
    """The network of `net` at its training initialisation (VividPose and image encoder fresh from
    `seed`; the frozen VAE kept), as the 'untrained' baseline."""
    from accelerate.utils import set_seed
    from ..pipelines.vividpose import VividPoseAnimation
    from ..vividpose.model import VividPose
    from .vividpose_task import small_image_encoder
    set_seed(seed)
    model = VividPose(net.model.config).eval()
    encoder = small_image_encoder(net.model.config.context_dim).eval()
    return VividPoseAnimation(model, net.vae, encoder, net.vae_scaling_factor, net.clip_mean, net.clip_std,
                              torch.float32, tiny=False)


def evaluate_checkpoint(path: str, data: str, split: str = "heldout", frames: int = 16, steps: int = 25,
                        cfg: float = 3.0, seed: int = 0, out: str | None = None, progress=print) -> dict:
    """{method: {region: {metric: mean over clips}}} (+ 'clips'); with `out`, also per-clip results,
    the table and one video strip per clip there."""
    net = load_vividpose_animation(path, None, torch.float32)
    nets = {"model": net, "untrained": untrained_like(net)}
    names = ClipDataset(data, split=split, frames=1).clips
    per_clip = {m: [] for m in METHODS}
    for number, name in enumerate(names):
        clip = load_clip(data, name)
        count = min(frames, int(clip["frames"].shape[0]))
        truth, mask = clip["frames"][:count].float() / 255.0, clip.get("mask")
        mask = None if mask is None else (mask[:count].float() / 255.0)
        videos = {"copy reference": truth[:1].expand(count, -1, -1, -1)}
        for method, model in nets.items():
            videos[method] = reconstruct_clip(model, clip, count, steps, seed, cfg)
        for method in METHODS:
            result = evaluate_video(videos[method], truth, mask, skip_first=1)
            per_clip[method].append({region: dict(zip(("l1", "psnr", "ssim"), getattr(result, region).means()))
                                     for region in _regions(result)})
        progress(f"[{number + 1}/{len(names)}] {name}: PSNR inside mask "
                 + ", ".join(f"{m} {per_clip[m][-1].get('inside', per_clip[m][-1]['whole'])['psnr']:.2f}"
                             for m in METHODS))
        if out:
            _save_strip(os.path.join(out, f"{name}.png"), truth, videos)
    summary = {m: _mean_over_clips(per_clip[m]) for m in METHODS}
    summary["clips"] = names
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({"summary": summary, "per_clip": per_clip}, f, indent=1)
        with open(os.path.join(out, "metrics.md"), "w") as f:
            f.write(table(summary) + "\n")
    return summary


def _regions(result) -> list[str]:
    return [r for r in ("whole", "inside", "outside") if getattr(result, r, None) is not None]


def _mean_over_clips(rows: list[dict]) -> dict:
    out = {}
    for region in rows[0]:
        out[region] = {k: float(np.nanmean([row[region][k] for row in rows])) for k in rows[0][region]}
    return out


def table(summary: dict) -> str:
    """A markdown table: one row per method and region."""
    lines = ["| method | region | L1 | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for method in METHODS:
        for region, values in summary[method].items():
            lines.append(f"| {method} | {region} | {values['l1']:.4f} | {values['psnr']:.2f} | {values['ssim']:.4f} |")
    return "\n".join(lines)


def _save_strip(path: str, truth: torch.Tensor, videos: dict) -> None:
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    picks = list(range(0, truth.shape[0], max(1, truth.shape[0] // 6)))
    rows = [truth] + [videos[m] for m in METHODS]
    grid = torch.cat([torch.cat([row[i] for i in picks], dim=1) for row in rows], dim=0)
    Image.fromarray((grid.clamp(0, 1) * 255).round().byte().numpy()).save(path)
