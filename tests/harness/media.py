"""Writes test/demo media into ComfyUI's input folder."""
from __future__ import annotations

import av
import numpy as np
from PIL import Image


def write_png(path: str, image: np.ndarray) -> str:
    Image.fromarray(image).save(path)
    return path


def write_mp4(path: str, frames: np.ndarray, fps: float = 12.0) -> str:
    """uint8 [T,H,W,3] → H.264 mp4 (even sizes, as yuv420p needs)."""
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "16"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")))
        out.mux(stream.encode())
    return path


def read_video(path: str) -> np.ndarray:
    with av.open(path) as src:
        return np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])


REFERENCE_FILE, DRIVING_FILE = "marionette_reference.png", "marionette_driving.mp4"  # names the workflow uses


def write_media(input_dir: str, synthetic: dict) -> dict:
    """Writes a synthetic reference (`.frames[0]`) and driving clip into a ComfyUI input folder."""
    import os
    write_png(os.path.join(input_dir, REFERENCE_FILE), synthetic["reference"].frames[0])
    clip = synthetic["driving"]
    write_mp4(os.path.join(input_dir, DRIVING_FILE), clip.frames, clip.fps)
    return dict(synthetic, ref_file=REFERENCE_FILE, video_file=DRIVING_FILE)
