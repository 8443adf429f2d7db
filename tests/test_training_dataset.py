"""The training data side: a synthetic video set (models/synthetic/video_set.py) prepared into a cached,
resumable dataset (models/training/dataset.py) and read back as windows."""
import json
import os
import time

import numpy as np
import pytest
import torch

from marionette.models.errors import MarionetteError
from marionette.models.synthetic.video_set import HELDOUT_WEIGHT, clip_spec, render_video_set, write_video
from marionette.models.training.dataset import (COLOUR_ORDERS, ClipDataset, clip_path, load_clip, prepare_dataset,
                                                read_video)

W, H, T = 96, 128, 10
NAMES = ["heldout_000", "train_000", "train_001"]


class FixedFace:
    """Stands in for the insightface embedder: the first frame's mean colour spread over 512 values."""
    def largest_face_embedding(self, image):
        return np.full(512, image.mean() / 255, np.float32), np.zeros(4, np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    videos, cache = tmp_path_factory.mktemp("videos"), tmp_path_factory.mktemp("cache")
    render_video_set(str(videos), train=2, heldout=1, width=W, height=H, frames=T, seed=0, progress=lambda _: None)
    (videos / "bad.mp4").write_text("not a video")
    frames, _ = read_video(videos / "train_000.mp4")
    write_video(videos / "short.mp4", frames[:4], 12.0)
    write_video(videos / "empty.mp4", np.full((T, H, W, 3), 128, np.uint8), 12.0)
    messages = []
    index = prepare_dataset(videos, cache, size=(W, H), progress=messages.append)
    return {"videos": videos, "cache": cache, "index": index, "messages": messages}


def test_the_video_set_holds_out_squats_and_heavy_bodies(prepared):
    manifest = json.loads((prepared["videos"] / "manifest.json").read_text())
    clips = {c["name"]: c for c in manifest["clips"]}
    assert sorted(clips) == NAMES
    for name, clip in clips.items():
        heldout = clip["split"] == "heldout"
        assert name.startswith(clip["split"])
        assert ("squat" in clip["motion"]) == heldout and (clip["phenotype"]["weight"] > HELDOUT_WEIGHT) == heldout
        assert clip == clip_spec(0, clip["split"], int(name[-3:]))   # reproducible from the seed alone
    assert clip_spec(1, "train", 0) != clip_spec(0, "train", 0)
    train = [clip_spec(0, "train", i) for i in range(200)]
    assert not any("squat" in c["motion"] or c["phenotype"]["weight"] > HELDOUT_WEIGHT for c in train)
    assert len({c["motion"] for c in train}) > 5
    extra = [clip_spec(0, "extra", i) for i in range(100)]                # --extra: bowing and bending clips
    assert all(c["split"] == "train" and c["name"] == f"extra_{i:03d}" for i, c in enumerate(extra))
    assert not any("squat" in c["motion"] or c["phenotype"]["weight"] > HELDOUT_WEIGHT for c in extra)
    assert all(("bow" in c["motion"]) != ("bend" in c["motion"]) for c in extra)
    assert {c["appearance_seed"] for c in extra}.isdisjoint({c["appearance_seed"] for c in train})
    kneel = [clip_spec(0, "kneel", i) for i in range(100)]                # --kneel: kneeling clips
    assert all(c["split"] == "train" and c["name"] == f"kneel_{i:03d}" for i, c in enumerate(kneel))
    assert all("kneel" in c["motion"] and "squat" not in c["motion"] for c in kneel)
    assert not any(c["phenotype"]["weight"] > HELDOUT_WEIGHT for c in kneel)
    assert {c["appearance_seed"] for c in kneel}.isdisjoint({c["appearance_seed"] for c in train + extra})
    lunge = [clip_spec(0, "lunge", i) for i in range(100)]                # --lunge: lunging and reaching clips
    assert all(c["split"] == "train" and c["name"] == f"lunge_{i:03d}" for i, c in enumerate(lunge))
    assert all("squat" not in c["motion"] for c in lunge)
    assert {"lunge", "reach", "kneel", "bow"} <= {part for c in lunge for part in c["motion"].split("+")}
    assert not any(c["phenotype"]["weight"] > HELDOUT_WEIGHT for c in lunge)
    assert {c["appearance_seed"] for c in lunge}.isdisjoint({c["appearance_seed"] for c in train + extra + kneel})
    with np.load(prepared["videos"] / "train_000.mask.npz") as data:
        masks = data["masks"]
    assert masks.shape == (T, H, W) and masks.dtype == bool and 0.05 < masks.mean() < 0.5
    frames, fps = read_video(prepared["videos"] / "heldout_000.mp4")
    assert frames.shape == (T, H, W, 3) and fps == 12


def test_clips_are_cached_with_their_settings(prepared):
    index = prepared["index"]
    assert index["clips"] == NAMES
    assert index["splits"] == {"heldout_000": "heldout", "train_000": "train", "train_001": "train"}
    assert index["settings"]["size"] == [W, H] and index["settings"]["render_type"] == "dense"
    assert json.loads((prepared["cache"] / "index.json").read_text()) == index
    clip = load_clip(prepared["cache"], "train_001")
    for key in ("frames", "render", "skeleton"):
        assert clip[key].shape == (T, H, W, 3) and str(clip[key].dtype) == "torch.uint8", key
    assert clip["mask"].shape == (T, H, W) and set(np.unique(clip["mask"].numpy())) == {0, 255}
    assert "face_embedding" not in clip and clip["split"] == "train"
    meta = clip["metadata"]
    assert (meta["source"], meta["fps"], meta["frames"], meta["size"]) == ("train_001.mp4", "12", str(T), f"{W}x{H}")
    assert (meta["render_type"], meta["skeleton_style"], meta["body_model"]) == ("dense", "openpose", "anny")
    source, _ = read_video(prepared["videos"] / "train_001.mp4")
    assert np.abs(clip["frames"].numpy().astype(int) - source).mean() < 2   # same size: the frames themselves


def test_bad_videos_are_skipped_with_the_reason(prepared):
    reasons = {s["file"]: s["reason"] for s in prepared["index"]["skipped"]}
    assert sorted(reasons) == ["bad.mp4", "empty.mp4", "short.mp4"]
    assert "No frames could be read" in reasons["bad.mp4"]
    assert "Too short: 4 frames" in reasons["short.mp4"]
    assert "person was found in only 0 of 10" in reasons["empty.mp4"]
    assert not any(clip_path(prepared["cache"], n).exists() for n in ("bad", "short", "empty"))


def test_guidance_covers_the_person(prepared):
    for name in NAMES:
        clip = load_clip(prepared["cache"], name)
        mask = clip["mask"].numpy() > 0
        drawn = clip["render"].numpy().max(-1) > 0
        assert (drawn & mask).sum() / mask.sum() > 0.75, name        # the fitted body lies on the person
        assert (drawn & ~mask).sum() / mask.sum() < 0.4, name
        bones = clip["skeleton"].numpy().max(-1) > 0
        assert all(bones[t].sum() > 100 for t in range(T)), name
        ys, xs = np.nonzero(bones[0])
        my, mx = np.nonzero(mask[0])
        assert abs(ys.mean() - my.mean()) < 12 and abs(xs.mean() - mx.mean()) < 8, name


def test_a_rerun_skips_the_cached_clips_and_redoes_a_missing_one(prepared):
    cache = prepared["cache"]
    stamps = {n: clip_path(cache, n).stat().st_mtime_ns for n in NAMES}
    os.remove(clip_path(cache, "train_001"))
    messages = []
    start = time.perf_counter()
    index = prepare_dataset(prepared["videos"], cache, size=(W, H), progress=messages.append)
    assert time.perf_counter() - start < 40
    assert index["clips"] == NAMES and len(index["skipped"]) == 3
    assert sum(m.endswith(": cached") for m in messages) == 2
    for name in ("heldout_000", "train_000"):
        assert clip_path(cache, name).stat().st_mtime_ns == stamps[name]
    assert clip_path(cache, "train_001").exists() and not list(cache.glob("clips/*.tmp"))


def test_bad_settings_raise_before_any_work(prepared, tmp_path):
    with pytest.raises(MarionetteError, match="render type"):
        prepare_dataset(prepared["videos"], tmp_path, render_type="colour", progress=lambda _: None)
    with pytest.raises(MarionetteError, match="skeleton style"):
        prepare_dataset(prepared["videos"], tmp_path, skeleton_style="stick", progress=lambda _: None)
    assert not (tmp_path / "index.json").exists()


def test_windows_of_a_split(prepared):
    cache = prepared["cache"]
    data = ClipDataset(cache, "train", frames=4)
    assert data.clips == ["train_000", "train_001"]
    assert len(data) == 8 and data.items[:4] == [("train_000", s, 0, 0) for s in (0, 2, 4, 6)]
    clip = load_clip(cache, "train_001")
    item = data[5]   # train_001 from frame 2
    for key in ("frames", "render", "skeleton", "mask"):
        assert item[key].shape[0] == 4 and (item[key] == clip[key][2:6]).all(), key
    assert (item["reference"] == clip["frames"][0]).all() and int(item["reference_index"]) == 0
    strided = ClipDataset(cache, "train", frames=4, stride=3)   # spans 10 frames: one window per clip
    assert strided.items == [("train_000", 0, 0, 0), ("train_001", 0, 0, 0)]
    assert (strided[1]["render"] == clip["render"][0:10:3]).all()
    heldout = ClipDataset(cache, "heldout", frames=8)
    assert heldout.clips == ["heldout_000"] and heldout.items == [("heldout_000", 0, 0, 0)]
    assert len(ClipDataset(cache, "heldout", frames=T + 1)) == 0


def test_reference_frames_other_than_the_first(prepared):
    """Each window once per reference frame the clip has; the window itself (anchor frame 0 first) is the
    same whatever the reference."""
    cache = prepared["cache"]
    plain = ClipDataset(cache, "train", frames=4, anchor=True)
    several = ClipDataset(cache, "train", frames=4, anchor=True, references=(0, 5, 10 * T))  # 10T: no clip has it
    assert len(several) == 2 * len(plain)
    clip = load_clip(cache, "train_001")
    picks = [i for i, (name, _, ref, _) in enumerate(several.items) if name == "train_001" and ref == 5]
    item = several[picks[1]]
    assert int(item["reference_index"]) == 5 and (item["reference"] == clip["frames"][5]).all()
    first = plain[[i for i, item in enumerate(plain.items) if item[0] == "train_001"][1]]
    for key in ("frames", "render", "skeleton", "indices"):
        assert (item[key] == first[key]).all(), key
    assert item["indices"][0] == 0
    with pytest.raises(MarionetteError, match="reference"):
        ClipDataset(cache, "train", frames=4, references=(-1,))


def test_colour_orders_reorder_the_frames_and_reference_not_the_guidance(prepared):
    cache = prepared["cache"]
    plain = ClipDataset(cache, "train", frames=4, references=(0, 3))
    coloured = ClipDataset(cache, "train", frames=4, references=(0, 3), colour_orders=6)
    assert len(coloured) == 6 * len(plain) and [i for i in coloured.items if i[3] == 0] == plain.items
    orders = {}
    for i, (name, start, ref, order) in enumerate(coloured.items):
        if (name, start, ref) == plain.items[5][:3]:
            orders[order] = coloured[i]
    original = plain[5]
    assert sorted(orders) == list(range(6)) and COLOUR_ORDERS[0] == (0, 1, 2)
    for order, item in orders.items():
        channels = list(COLOUR_ORDERS[order])
        assert int(item["colour_order"]) == order
        assert torch.equal(item["frames"], original["frames"][..., channels])
        assert torch.equal(item["reference"], original["reference"][..., channels])
        for key in ("render", "skeleton", "mask", "indices"):
            assert torch.equal(item[key], original[key]), key
    assert len({tuple(COLOUR_ORDERS[o]) for o in orders}) == 6
    with pytest.raises(MarionetteError, match="colour orders"):
        ClipDataset(cache, "train", frames=4, colour_orders=7)


def test_a_face_embedder_adds_the_first_frames_embedding(prepared, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.link(prepared["videos"] / "train_000.mp4", videos / "train_000.mp4")
    index = prepare_dataset(videos, tmp_path / "cache", size=(48, 48), face_embedder=FixedFace(),
                            progress=lambda _: None)
    clip = load_clip(tmp_path / "cache", "train_000")
    first, _ = read_video(videos / "train_000.mp4")
    assert index["settings"]["face_embedding"] and clip["metadata"]["face_embedding"] == "True"
    assert clip["face_embedding"].shape == (512,) and str(clip["face_embedding"].dtype) == "torch.float32"
    assert np.allclose(clip["face_embedding"].numpy(), first[0].mean() / 255)
    assert clip["frames"].shape == (T, 48, 48, 3) and "mask" not in clip   # square crop; no mask file here
