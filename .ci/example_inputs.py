"""Renders the example inputs the shipped workflows open with (workflows/inputs/): a reference photo
and a driving clip of two differently shaped people from the free Anny body model (our own synthetic
generator, free to redistribute). Run it through `bash .ci/demo`'s environment:

    source "$(bash .ci/setup.sh)" && "$MARIONETTE_VENV/bin/python" .ci/example_inputs.py
"""
import os
import sys

import av
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import harness  # noqa: E402,F401  (registers the `marionette` library alias)
from harness.media import DRIVING_FILE, REFERENCE_FILE  # noqa: E402  (the names the workflows use)

EXAMPLE_DIR = os.path.join(ROOT, "workflows", "inputs")  # nodes/example_inputs.py copies them from here

REFERENCE = {"width": 512, "height": 768, "seed": 7}
DRIVING = {"frames": 24, "width": 512, "height": 512, "seed": 3}
CRF = 26  # small files (the pack ships them); the people stay sharp enough for every pose backend


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(CRF), "preset": "veryslow"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode())


def main() -> None:
    from marionette.models.synthetic.clip import render_driving_clip, render_reference
    os.makedirs(EXAMPLE_DIR, exist_ok=True)
    reference = render_reference(**REFERENCE).frames[0]
    Image.fromarray(reference).save(os.path.join(EXAMPLE_DIR, REFERENCE_FILE), optimize=True)
    clip = render_driving_clip(**DRIVING)
    write_mp4(os.path.join(EXAMPLE_DIR, DRIVING_FILE), clip.frames, clip.fps)
    for name in (REFERENCE_FILE, DRIVING_FILE):
        print(f"{name}: {os.path.getsize(os.path.join(EXAMPLE_DIR, name)) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
