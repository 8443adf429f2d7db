"""Context windows: which frames the motion module sees together when a clip is longer than one window.

The official long-video pipelines (Champ `pipeline_aggregation.py`, Moore `pipeline_pose2vid_long.py`) call
the "uniform" context scheduler (from animatediff-cli-prompt-travel, `pipelines/context.py`) with step 0,
stride 1 and closed_loop on, so the windows are the same at every denoising step:
- a clip of at most `size` frames is one window of all its frames;
- otherwise windows start at 0, size - overlap, 2 (size - overlap), ... while the start is below F, and each
  holds the `size` frames start, start + 1, ... taken modulo F: the last window wraps around to the first
  frames (for F = 100, size 24, overlap 4: 80..99 + 0..3), as if the clip were a loop.

`closed_loop=False` is ours: windows never wrap (a clip that is not a loop should not have its last frames
attended together with its first). The windows, as few as cover the clip with at least `overlap` shared
frames between neighbours, are spread evenly from the first frame to the last. (The official scheduler's own
closed_loop=False, which no official pipeline uses, still wraps whenever the last start is past F - size.)

Every frame is in at least one window; the sampler averages a frame's predictions over its windows.
"""
from __future__ import annotations

import math

from ..errors import MarionetteError

MAX_CONTEXT = 32       # the motion modules' sinusoidal position table (`pe`) has 32 rows
OFFICIAL_CONTEXT = 24  # the clip length of stage-2 training and the official pipelines' context_frames
OFFICIAL_OVERLAP = 4


def check_context(size: int, overlap: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_CONTEXT:
        raise MarionetteError(f"The context window must hold 1 to {MAX_CONTEXT} frames, got {size!r}: the motion "
                              f"modules' position encoding has {MAX_CONTEXT} entries.",
                              f"Use {OFFICIAL_CONTEXT} frames, the official value (trained on 24-frame clips).")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise MarionetteError(f"The context overlap must be from 0 to {size - 1} for {size}-frame windows, "
                              f"got {overlap!r}.", f"Use {OFFICIAL_OVERLAP}, the official value.")


def context_windows(num_frames: int, size: int = OFFICIAL_CONTEXT, overlap: int = OFFICIAL_OVERLAP,
                    closed_loop: bool = True) -> list[list[int]]:
    """The frame indices of every window, in the order they are run."""
    check_context(size, overlap)
    if num_frames < 1:
        raise MarionetteError(f"A clip needs at least one frame, got {num_frames}.", "Connect guidance frames.")
    if num_frames <= size:
        return [list(range(num_frames))]
    stride = size - overlap
    if closed_loop:
        return [[(start + k) % num_frames for k in range(size)] for start in range(0, num_frames, stride)]
    count = math.ceil((num_frames - overlap) / stride)
    last = num_frames - size
    starts = sorted({round(i * last / (count - 1)) for i in range(count)})
    return [list(range(start, start + size)) for start in starts]
