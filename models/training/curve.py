"""The training curve of a run's log.csv as a picture: the loss averaged over windows of steps."""
from __future__ import annotations

import csv

import numpy as np

from ..evaluation.metrics import line_panel

COLOURS = {"loss": (31, 119, 180)}


def read_log(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of a trainer log.csv."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def read_logs(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of runs that continue one another (`--init` from the previous export): each log's
    steps counted on from the previous log's last step."""
    steps, losses, offset = [], [], 0
    for path in paths:
        s, loss = read_log(path)
        steps.append(s + offset)
        losses.append(loss)
        offset = int(steps[-1][-1]) if len(s) else offset
    return np.concatenate(steps), np.concatenate(losses)


def averaged(steps: np.ndarray, losses: np.ndarray, points: int = 100) -> tuple[list[int], np.ndarray]:
    """The loss averaged over `points` equal windows of steps (EDM losses are noisy step to step)."""
    windows = np.array_split(np.arange(len(steps)), min(points, len(steps)))
    return [int(steps[w[-1]]) for w in windows], np.array([losses[w].mean() for w in windows])


def plot_curve(log_paths: str | list[str], out_path: str, title: str = "training loss", width: int = 640,
               height: int = 300) -> None:
    """The curve of one log, or of several runs that continue one another (`read_logs`)."""
    from PIL import Image, ImageDraw, ImageFont
    steps, losses = read_logs([log_paths] if isinstance(log_paths, str) else list(log_paths))
    xs, ys = averaged(steps, losses)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    line_panel(draw, (56, 22, width - 12, height - 24), xs, [("loss", ys)],
               f"{title}, mean of {max(1, len(steps) // len(xs))} steps; x: step", 3, font,
               COLOURS, dots=False)
    image.save(out_path)
