"""A folder of videos -> a cached, resumable training set of (frames, guidance render, skeleton) clips.

Each video goes through the driving-video stages of workflows/vividpose.json: embedded BlazePose
(hands and face on, 'light' smoothing), the body fit (50 iterations, temporal smoothing 1), then
RenderGuidance's map `render_type` (depth range 'frame') and the body's own skeleton in `skeleton_style`.
Everything is then centre-cropped to the target aspect and area-resized to `size`.

Cache layout:
- clips/<stem>.safetensors: uint8 frames / render / skeleton [T, H, W, 3], optional mask [T, H, W] (0/255,
  from <stem>.mask.npz beside the video), optional float32 face_embedding [512]; metadata: the settings.
- index.json: {"settings", "clips": [stems], "splits": {stem: split}, "skipped": [{"file", "reason"}]}.
A clip whose cache file holds the same settings is not prepared again, so a stopped run resumes.

    python -m models.training.dataset --videos DIR --cache DIR [--width 96 --height 128 --body-model anny
                                                                --render-type dense]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import MarionetteError
from ..pose.draw import DRAW_STYLES

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".gif")
RENDER_TYPES = ("dense", "normal", "depth", "semantic")
SKELETON_STYLES = DRAW_STYLES  # as the DWPoseExtract / RenderGuidance nodes draw them
MEDIAPIPE_DIR = Path(__file__).resolve().parents[1] / "mediapipe"   # the embedded pose models
SMOOTHING, FIT_ITERATIONS, TEMPORAL_SMOOTHING, DEPTH_RANGE = "light", 50, 1.0, "frame"
MIN_PERSON_SHARE = 0.5   # a clip needs a person in at least this share of its frames
COLOUR_ORDERS = tuple(itertools.permutations(range(3)))  # the 6 orders of the RGB channels, as-is first


def clip_path(cache_dir, name: str) -> Path:
    return Path(cache_dir) / "clips" / f"{name}.safetensors"


# ------------------------------------------------------------------------------------------- images

def read_video(path: Path) -> tuple[np.ndarray, float]:
    """RGB uint8 [T, H, W, 3] and fps (0 when the container does not say)."""
    import cv2
    capture = cv2.VideoCapture(str(path))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    capture.release()
    if not frames:
        raise MarionetteError(f"No frames could be read from {path.name}.", "Use a video file OpenCV can decode.")
    if len({f.shape for f in frames}) > 1:
        raise MarionetteError(f"The frames of {path.name} change size.", "Re-encode the video at one size.")
    return np.ascontiguousarray(np.stack(frames)), fps


def crop_box(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the centred crop of a `src` (w, h) image with `dst`'s aspect."""
    (w, h), (tw, th) = src, dst
    if w * th > h * tw:   # too wide: trim the sides
        cw, ch = max(1, round(h * tw / th)), h
    else:
        cw, ch = w, max(1, round(w * th / tw))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


def fit_to_size(images: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """[T, H, W(, C)] -> centre-cropped to `size`'s aspect, resized to `size` (w, h): area, or nearest."""
    import cv2
    x0, y0, x1, y1 = crop_box((images.shape[2], images.shape[1]), size)
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return np.stack([cv2.resize(np.ascontiguousarray(im[y0:y1, x0:x1]), tuple(size), interpolation=mode)
                     for im in images])


def read_mask(path: Path, frames: int, height: int, width: int) -> np.ndarray | None:
    """The person masks of <stem>.mask.npz as bool [T, H, W], or None when there is no such file."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        masks = np.asarray(data["masks"] if "masks" in data.files else data[data.files[0]]).astype(bool)
    if masks.shape != (frames, height, width):
        raise MarionetteError(f"{path.name} holds masks of shape {masks.shape}, the video {(frames, height, width)}.",
                              "Write one mask per frame at the video's size.")
    return masks


# ------------------------------------------------------------------------------------------- stages

class Stages:
    """The workflow's pose, body and guidance stages, their models loaded once for the whole folder."""

    def __init__(self, body_model: str, render_type: str, skeleton_style: str, body_model_dir=None, progress=print):
        from ..pose.blazepose import BlazePoseEstimator
        _check_choices(render_type, skeleton_style)
        self.render_type, self.skeleton_style = render_type, skeleton_style
        self.estimator = BlazePoseEstimator(str(MEDIAPIPE_DIR), hands=True, face=True)
        self.model = _load_body_model(body_model, body_model_dir, progress)

    def poses(self, frames: np.ndarray) -> list:
        from ..pose.smoothing import smooth_frames
        return smooth_frames(self.estimator(frames), SMOOTHING)

    def guidance(self, poses: list) -> tuple[np.ndarray, np.ndarray]:
        """(render, skeleton) uint8 [T, H, W, 3] at the frames' size, from the fitted body."""
        from ..body.fit import fit_options, fit_sequence
        from ..body.posing import pose_sequence
        from ..render.guidance import GuidanceRenderer, skeleton_frames
        options = fit_options(iterations=FIT_ITERATIONS, temporal_smoothing=TEMPORAL_SMOOTHING)
        with torch.inference_mode(False), torch.enable_grad():   # the fit is an optimisation
            body = fit_sequence(self.model, poses, options=options)
        posed = pose_sequence(self.model, body)
        cam = body.camera
        with GuidanceRenderer(cam.width, cam.height) as renderer:
            render = renderer.render_sequence(posed.vertices, self.model.faces, cam, self.model.part_labels,
                                              maps=(self.render_type,), depth_range=DEPTH_RANGE)[self.render_type]
        style, options = SKELETON_STYLES[self.skeleton_style]
        skeleton = skeleton_frames(posed.body18, posed.hands, posed.face, cam, style=style, **options)
        return render, skeleton


def _check_choices(render_type: str, skeleton_style: str) -> None:
    if render_type not in RENDER_TYPES:
        raise MarionetteError(f"Unknown render type {render_type!r}.", f"Use one of: {', '.join(RENDER_TYPES)}.")
    if skeleton_style not in SKELETON_STYLES:
        raise MarionetteError(f"Unknown skeleton style {skeleton_style!r}.",
                              f"Use one of: {', '.join(SKELETON_STYLES)}.")


def _load_body_model(kind: str, model_dir, progress):
    from ..body.loading import load_body_model
    if str(kind).lower() == "anny":
        from ..body.anny_data import anny_data_ready, build_anny_data
        if not anny_data_ready():
            progress("Building the Anny body model data (first use only, 1-3 minutes)...")
            build_anny_data(log=progress)
    with torch.inference_mode(False):   # the fit differentiates through the model
        return load_body_model(kind, None if model_dir is None else str(model_dir))


# ------------------------------------------------------------------------------------------- cache

def _settings(size, body_model, render_type, skeleton_style, min_frames, face: bool) -> dict:
    return {"size": [int(size[0]), int(size[1])], "body_model": body_model, "render_type": render_type,
            "skeleton_style": skeleton_style, "min_frames": int(min_frames), "pose_backend": "blazepose",
            "smoothing": SMOOTHING, "fit_iterations": FIT_ITERATIONS, "temporal_smoothing": TEMPORAL_SMOOTHING,
            "depth_range": DEPTH_RANGE, "face_embedding": bool(face)}


def _clip_metadata(settings: dict, source: Path) -> dict[str, str]:
    """What makes a cache file valid: the settings and the source file (name and byte size)."""
    w, h = settings["size"]
    return {"source": source.name, "source_bytes": str(source.stat().st_size), "size": f"{w}x{h}",
            **{k: str(settings[k]) for k in ("render_type", "skeleton_style", "body_model", "fit_iterations",
                                              "smoothing", "depth_range", "face_embedding")}}


def read_metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:   # a missing or damaged file is simply prepared again
        return None


def _is_cached(path: Path, wanted: dict[str, str]) -> bool:
    found = read_metadata(path)
    return found is not None and all(found.get(k) == v for k, v in wanted.items())


def _save_clip(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(tmp), metadata)
    os.replace(tmp, path)   # a stopped run never leaves a half-written clip under the final name


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _manifest_splits(video_dir: Path) -> dict[str, str]:
    """{clip name: split} from a manifest.json in the video folder ({"clips": [...]} or a list)."""
    path = video_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MarionetteError(f"{path} cannot be read ({e}).", "Fix or remove the manifest.") from e
    clips = data.get("clips", []) if isinstance(data, dict) else data
    return {str(c["name"]): str(c.get("split", "train")) for c in clips if isinstance(c, dict) and "name" in c}


def _prepare_clip(video: Path, stages: Stages, size, min_frames: int, face_embedder) -> tuple[dict, float, int]:
    """One video's tensors, fps and frame count; MarionetteError when the clip is unusable."""
    frames, fps = read_video(video)
    t, h, w = frames.shape[:3]
    if t < min_frames:
        raise MarionetteError(f"Too short: {t} frames (fewer than {min_frames}).", "Use longer clips.")
    masks = read_mask(video.with_name(video.stem + ".mask.npz"), t, h, w)
    poses = stages.poses(frames)
    seen = sum(p.num_people > 0 for p in poses)
    if seen < MIN_PERSON_SHARE * t:
        raise MarionetteError(f"A person was found in only {seen} of {t} frames.",
                              "Use clips that show one person throughout.")
    render, skeleton = stages.guidance(poses)
    tensors = {"frames": fit_to_size(frames, size), "render": fit_to_size(render, size),
               "skeleton": fit_to_size(skeleton, size)}
    if masks is not None:
        tensors["mask"] = fit_to_size(masks.astype(np.uint8) * 255, size, nearest=True)
    if face_embedder is not None:
        embedding, _ = face_embedder.largest_face_embedding(frames[0])
        if embedding is not None:
            tensors["face_embedding"] = np.asarray(embedding, np.float32).reshape(512)
    return tensors, fps, t


def prepare_dataset(video_dir, cache_dir, size=(96, 128), body_model="anny", render_type="dense",
                    skeleton_style="openpose", min_frames=8, progress=print, face_embedder=None,
                    body_model_dir=None) -> dict:
    """Prepares every video of `video_dir` into `cache_dir` (see the module doc); returns the index.

    `face_embedder`: an object with `largest_face_embedding(rgb uint8 [H, W, 3]) -> (embedding | None, box)`,
    e.g. models.stableanimator.face_id.FaceEmbedder(insightface_root); it embeds each clip's first frame.
    `body_model_dir`: the SMPL-X files' folder when body_model is "smplx". Bad settings raise; a bad clip
    is skipped and listed with the reason."""
    video_dir, cache_dir = Path(video_dir), Path(cache_dir)
    if not video_dir.is_dir():
        raise MarionetteError(f"No video folder at {video_dir}.", "Pass the folder holding the training videos.")
    size = (int(size[0]), int(size[1]))
    if min(size) < 8 or int(min_frames) < 1:
        raise MarionetteError(f"Bad size {size} or min_frames {min_frames}.", "Use sizes >= 8 and min_frames >= 1.")
    _check_choices(render_type, skeleton_style)
    (cache_dir / "clips").mkdir(parents=True, exist_ok=True)
    settings = _settings(size, body_model, render_type, skeleton_style, min_frames, face_embedder is not None)
    splits = _manifest_splits(video_dir)
    videos = sorted(p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    index = {"settings": settings, "clips": [], "splits": {}, "skipped": []}
    stages = None   # models load on the first clip that needs them
    for i, video in enumerate(videos):
        name, start = video.stem, time.perf_counter()
        path, metadata = clip_path(cache_dir, name), _clip_metadata(settings, video)
        if name in index["splits"]:
            index["skipped"].append({"file": video.name, "reason": f"another video is already named {name!r}"})
        elif _is_cached(path, metadata):
            index["clips"].append(name)
            index["splits"][name] = splits.get(name, "train")
            progress(f"[{i + 1}/{len(videos)}] {video.name}: cached")
        else:
            stages = stages or Stages(body_model, render_type, skeleton_style, body_model_dir, progress)
            try:
                tensors, fps, count = _prepare_clip(video, stages, size, int(min_frames), face_embedder)
            except MarionetteError as e:
                index["skipped"].append({"file": video.name, "reason": str(e)})
                progress(f"[{i + 1}/{len(videos)}] {video.name}: skipped: {e}")
            else:
                _save_clip(path, tensors, dict(metadata, fps=f"{fps:g}", frames=str(count)))
                index["clips"].append(name)
                index["splits"][name] = splits.get(name, "train")
                progress(f"[{i + 1}/{len(videos)}] {video.name}: {count} frames ({time.perf_counter() - start:.1f} s)")
        _write_json(cache_dir / "index.json", index)
    _write_json(cache_dir / "index.json", index)
    return index


# ------------------------------------------------------------------------------------------- reading

def read_index(cache_dir) -> dict:
    path = Path(cache_dir) / "index.json"
    if not path.is_file():
        raise MarionetteError(f"No index.json in {cache_dir}.", "Run prepare_dataset on the videos first.")
    return json.loads(path.read_text(encoding="utf-8"))


def load_clip(cache_dir, name: str) -> dict:
    """A cached clip's full tensors plus "metadata" (its settings, fps, frame count) and "split"."""
    from safetensors.torch import load_file
    path = clip_path(cache_dir, name)
    if not path.is_file():
        raise MarionetteError(f"No cached clip named {name!r} in {cache_dir}.", "Use a name from index.json's clips.")
    out = dict(load_file(str(path)))
    out["metadata"] = read_metadata(path) or {}
    out["split"] = read_index(cache_dir).get("splits", {}).get(name, "train")
    return out


class ClipDataset(torch.utils.data.Dataset):
    """Windows of `frames` frames (every `stride`-th frame) from the cached clips of one split.

    Items are (clip, start, reference, colour order) over every clip of the split, starts stepping by
    frames // 2; each item is a dict of uint8 tensors: frames / render / skeleton [F, H, W, 3], mask [F, H, W] when
    cached, reference [H, W, 3] (the clip's first frame unless `references` says otherwise), plus `clip`
    (its position in `clips`) and `indices` (the frame numbers). `anchor=True` lays windows out as the SVD
    sampler does: the clip's frame 0 first, then F - 1 consecutive frames, so a model learns the windows
    it will be sampled in.
    `references`: the frame numbers used as the reference image (each window once per reference the
    clip has, `reference_index` says which): other frames than the first teach a model to move the person
    from the reference's pose to poses of other moments, as Animate Anyone samples its references.
    `colour_orders` (1..6): each window also with the RGB channels of its frames and reference reordered
    (`COLOUR_ORDERS`, `colour_order` says which; guidance maps untouched): new clothes and rooms from the
    same clips, so a model learns to take colours from the reference instead of remembering them."""

    def __init__(self, cache_dir, split: str = "train", frames: int = 8, stride: int = 1, anchor: bool = False,
                 references: tuple[int, ...] = (0,), colour_orders: int = 1):
        references = tuple(int(r) for r in references)
        if int(frames) < 1 + bool(anchor) or int(stride) < 1 or not references or min(references) < 0 \
                or not 1 <= int(colour_orders) <= len(COLOUR_ORDERS):
            raise MarionetteError(f"Bad window: frames={frames}, stride={stride}, references={references}, "
                                  f"colour_orders={colour_orders}.",
                                  "Use frames >= 1 (2 with the anchor frame), stride >= 1, reference frame "
                                  f"numbers >= 0 and 1..{len(COLOUR_ORDERS)} colour orders.")
        self.cache_dir, self.frames, self.stride, self.anchor = Path(cache_dir), int(frames), int(stride), bool(anchor)
        self.colour_orders = int(colour_orders)
        index = read_index(cache_dir)
        splits = index.get("splits", {})
        self.clips = [name for name in index["clips"] if splits.get(name, "train") == split]
        moving = self.frames - self.anchor
        span, step = (moving - 1) * self.stride + 1, max(1, moving // 2)
        self.items = []
        for name in self.clips:
            count = int((read_metadata(clip_path(cache_dir, name)) or {}).get("frames", 0))
            first = int(self.anchor)
            self.items += [(name, start, ref, order) for order in range(self.colour_orders)
                           for ref in references if ref < count for start in range(first, count - span + 1, step)]

    def __len__(self) -> int:
        return len(self.items)

    def window(self, start: int) -> list[int]:
        moving = list(range(start, start + (self.frames - self.anchor) * self.stride, self.stride))
        return [0] + moving if self.anchor else moving

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        name, start, ref, order = self.items[i]
        indices = self.window(start)
        with safe_open(str(clip_path(self.cache_dir, name)), "pt") as f:
            keys = set(f.keys())
            out = {}
            for k in ("frames", "render", "skeleton", "mask"):
                if k in keys:
                    moving = f.get_slice(k)[indices[self.anchor]:indices[-1] + 1][::self.stride]
                    out[k] = torch.cat([f.get_slice(k)[0:1], moving]) if self.anchor else moving.contiguous()
            out["reference"] = f.get_slice("frames")[ref:ref + 1][0].contiguous()
        if order:
            channels = list(COLOUR_ORDERS[order])
            out["frames"], out["reference"] = out["frames"][..., channels], out["reference"][..., channels]
        out["clip"] = torch.tensor(self.clips.index(name))
        out["reference_index"] = torch.tensor(ref)
        out["colour_order"] = torch.tensor(order)
        out["indices"] = torch.tensor(indices)
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare a folder of videos into a cached VividPose training set.")
    parser.add_argument("--videos", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--body-model", default="anny")
    parser.add_argument("--render-type", default="dense", choices=RENDER_TYPES)
    parser.add_argument("--skeleton-style", default="openpose", choices=tuple(SKELETON_STYLES))
    parser.add_argument("--min-frames", type=int, default=8)
    parser.add_argument("--body-model-dir", default=None, help="the SMPL-X files' folder (--body-model smplx)")
    a = parser.parse_args(argv)
    index = prepare_dataset(a.videos, a.cache, (a.width, a.height), a.body_model, a.render_type, a.skeleton_style,
                            a.min_frames, body_model_dir=a.body_model_dir)
    print(f"{len(index['clips'])} clips ready, {len(index['skipped'])} skipped.")


if __name__ == "__main__":
    main()
