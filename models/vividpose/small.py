"""The small VividPose trained with Marionette's trainer on synthetic people (96x128, 8-frame windows,
identity controller off, its patch latent and image encoder bundled). `weights/TRAINING.md` holds the
exact commands that made it and its training log; it ships with the pack so the VividPose workflow
animates without downloads."""
from __future__ import annotations

from pathlib import Path

SMALL_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "vividpose_small_96x128.safetensors"


def small_checkpoint() -> Path | None:
    """The bundled file, or None where it is absent (e.g. a trimmed install)."""
    return SMALL_CHECKPOINT if SMALL_CHECKPOINT.is_file() else None
