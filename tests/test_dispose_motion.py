"""DisPose motion fields from body keypoints: the sparse trajectory field and the CMP dense field against
re-derivations of the official math (official loops, cv2.filter2D, the flip-and-scatter sparse flow,
per-frame CMP runs), the documented handling of missing keypoints, and the input errors."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_dispose_cmp import official_cmp_logits, official_fuser

from marionette.models.dispose.cmp import random_cmp, tiny_cmp_config
from marionette.models.dispose.motion_field import (body_tracks, dense_motion_field_cmp, reference_tensor,
                                                    sparse_motion_field)
from marionette.models.errors import MarionetteError, NoPersonError
from marionette.models.pose.types import PoseFrame, empty_frame


def pose_frames(xy, score, width, height):
    """PoseFrames of one person from body xy [F,18,2] and scores [F,18]."""
    out = []
    for pts, s in zip(xy, score):
        frame = empty_frame(width, height, people=1)
        frame.body[0, :, :2], frame.body[0, :, 2] = pts, s
        out.append(frame)
    return out


def random_motion(frames=4, width=160, height=120, seed=0, spread=12.0):
    """Keypoints spread over the canvas (some near the borders) moving by up to `spread` px per frame."""
    rng = np.random.default_rng(seed)
    start = rng.uniform([2, 2], [width - 3, height - 3], size=(18, 2))
    steps = rng.normal(0, spread / 2, size=(frames - 1, 18, 2))
    xy = np.concatenate([start[None], start[None] + np.cumsum(steps, 0)])
    return xy.astype(np.float32).astype(np.float64), np.ones((frames, 18))  # as PoseFrame stores them


# ------------------------------------------------------------------------------ sparse field
def official_sparse(xy, visible, height, width):
    """points_to_flows + the 199/sigma-20 bivariate Gaussian through cv2.filter2D, as the official code
    runs it, with one change: a keypoint counts only when visible at both ends (our deviation)."""
    track = np.stack([np.clip(xy[..., 0], 0, width - 1), np.clip(xy[..., 1], 0, height - 1)], -1)
    drag = np.zeros((len(xy) - 1, height, width, 2))
    for k in range(18):
        for i in range(len(xy) - 1):
            if visible[i, k] and visible[i + 1, k]:
                start, end = track[i, k], track[i + 1, k]
                drag[i, int(start[1]), int(start[0])] = end - start
    axis = np.arange(-199 // 2 + 1.0, 199 // 2 + 1.0)
    xx, yy = np.meshgrid(axis, axis)
    kernel = np.exp(-0.5 * (xx ** 2 + yy ** 2) / 20.0 ** 2)
    kernel /= kernel.sum()
    return np.stack([cv2.filter2D(d, -1, kernel) for d in drag]).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("width,height", [(160, 120), (72, 64)])  # 72x64: the kernel folds several times
def test_sparse_field_matches_official_math(width, height):
    xy, score = random_motion(frames=5, width=width, height=height, seed=width)
    xy[2, 4] = (-7.0, height + 3.0)  # off the canvas: clamped like the official pose2track
    xy[1, 15] = np.floor(xy[1, 14]) + 0.5  # same pixel as joint 14: the later joint's vector wins
    ours = sparse_motion_field(pose_frames(xy, score, width, height))
    expected = official_sparse(xy, score > 0.3, height, width)
    assert ours.shape == (4, 2, height, width) and ours.dtype == torch.float32
    assert np.abs(expected).max() > 1e-3
    assert np.abs(ours.numpy() - expected).max() < 1e-6 * np.abs(expected).max()  # float32 output
    exact = sparse_motion_field(pose_frames(xy, score, width, height), dtype=torch.float64)
    assert np.abs(exact.numpy() - expected).max() < 1e-14


def test_sparse_field_is_frame_to_frame_and_scaled_to_the_field_size():
    """One joint moving 10 px then 20 px right: map 0 carries +10, map 1 +20 (not +30 from the
    reference); the filter is normalised, so each map sums to its displacement away from borders."""
    xy = np.full((3, 18, 2), 100.0)
    score = np.zeros((3, 18))
    score[:, 1] = 1.0
    xy[:, 1] = [(100, 100), (110, 100), (130, 100)]
    field = sparse_motion_field(pose_frames(xy, score, 300, 200))
    sums = field.double().sum((2, 3))
    assert torch.allclose(sums, torch.tensor([[10.0, 0.0], [20.0, 0.0]], dtype=torch.float64), atol=1e-6)
    peak = field[0, 0].argmax()
    assert divmod(int(peak), 300) == (100, 100)  # written at the start position (frame 0)
    assert field[0, 0].max() == pytest.approx(10 / (2 * np.pi * 400), rel=0.01)
    doubled = sparse_motion_field(pose_frames(xy, score, 300, 200), height=400, width=600)
    assert doubled.shape == (2, 2, 400, 600)  # the same canvas scaled x2: displacements double
    assert doubled.double().sum((2, 3))[1, 0] == pytest.approx(40.0, abs=1e-5)


def test_missing_keypoints_make_no_vectors():
    """Official: a joint missing at the end frame (stored at 0,0) gives a vector towards the corner;
    here it gives nothing, and a joint missing at the start gives nothing either."""
    xy, score = random_motion(frames=3, width=200, height=150, seed=4)
    score[1, 5] = 0.0  # missing in frame 1: no vector in map 0 (end) nor map 1 (start)
    score[2, 7] = 0.2  # below the 0.3 visibility threshold in frame 2
    frames = pose_frames(xy, score, 200, 150)
    only_5_7 = np.zeros((3, 18))
    only_5_7[:, [5, 7]] = 1.0
    kept = sparse_motion_field(frames)
    all_visible = sparse_motion_field(pose_frames(xy, np.ones((3, 18)), 200, 150))
    contribution = sparse_motion_field(pose_frames(xy, only_5_7, 200, 150))
    assert torch.allclose(kept[0], all_visible[0] - _single(xy, 5, 0, 200, 150), atol=1e-7)
    assert torch.allclose(kept[1], all_visible[1] - contribution[1], atol=1e-7)


def _single(xy, k, i, width, height):
    score = np.zeros((len(xy), 18))
    score[:, k] = 1.0
    return sparse_motion_field(pose_frames(xy, score, width, height))[i]


# ------------------------------------------------------------------------------- CMP field
def official_sparse_384(xy, visible_pairs, height, width):
    """get_sparse_flow at 384 as the official code does it (flip to (y,x), subtract frame 0, scatter at the
    truncated reference position), keeping only keypoints visible in the reference and in frame t."""
    poses = torch.from_numpy(np.stack([np.clip(xy[..., 0], 0, width - 1) / width * 384,
                                       np.clip(xy[..., 1], 0, height - 1) / height * 384], -1))[None]
    flipped = torch.flip(poses, dims=[3])
    flow = torch.flip((flipped - flipped[:, :1])[:, 1:], dims=[3])
    start = flipped[:, :1].repeat(1, len(xy) - 1, 1, 1)
    sparse = torch.zeros(len(xy) - 1, 384, 384, 2, dtype=flow.dtype)
    mask = torch.zeros(len(xy) - 1, 384, 384)
    for t in range(len(xy) - 1):
        for k in np.nonzero(visible_pairs[t])[0]:
            r, c = start[0, t, k].long().clamp(0, 383)
            sparse[t, r, c] = flow[0, t, k]
            mask[t, r, c] = 1
    return sparse.permute(0, 3, 1, 2).float(), mask[:, None].repeat(1, 2, 1, 1)


def official_dense(net, image_hwc, xy, visible_pairs):
    """preprocess + get_cmp_flow + the final resize, one frame per CMP run as in the official code."""
    height, width = image_hwc.shape[:2]
    first = torch.from_numpy(image_hwc).permute(2, 0, 1)[None].float() / 255
    first_384 = F.interpolate(first, (384, 384))
    sparse, mask = official_sparse_384(xy, visible_pairs, height, width)
    sd, cfg = net.state_dict(), net.config
    flows = []
    for t in range(len(sparse)):
        logits = official_cmp_logits(sd, first_384 * 2 - 1, torch.cat([sparse[t:t + 1], mask[t:t + 1]], 1))
        flows.append(official_fuser(logits, cfg.nbins, cfg.fmax, (384, 384)))
    flow = F.interpolate(torch.cat(flows), (height, width), mode="nearest")
    flow[:, 0] *= width / 384
    flow[:, 1] *= height / 384
    return flow


@pytest.fixture(scope="module")
def tiny_cmp():
    return random_cmp(tiny_cmp_config(), seed=5)


def test_dense_cmp_field_matches_official_pipeline(tiny_cmp):
    width, height = 96, 160
    xy, score = random_motion(frames=4, width=width, height=height, seed=7, spread=20)
    score[2, 3] = 0.0  # missing in frame 2: not a guide for map 1 (the official code would guide to 0,0)
    xy[0, 16], xy[0, 17] = (40.1, 60.05), (40.15, 60.1)  # one 384-grid pixel: the later joint's guide wins
    image = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    calls = []
    with torch.no_grad():
        ours = dense_motion_field_cmp(tiny_cmp, image, pose_frames(xy, score, width, height), batch_size=2,
                                      callback=lambda done, total: calls.append((done, total)))
        tracks = body_tracks(pose_frames(xy, score, width, height))
        pairs = tracks.visible[:1] & tracks.visible[1:]
        expected = official_dense(tiny_cmp, image, xy, pairs)
    assert ours.shape == (3, 2, height, width)
    assert calls == [(2, 3), (3, 3)]
    assert expected.abs().max() > 0.5
    assert (ours - expected).abs().max() < 1e-4
    flat = reference_tensor(torch.from_numpy(image).float()[None] / 255)
    assert torch.allclose(flat, reference_tensor(image))  # float [1,H,W,3] in 0..1 == uint8 [H,W,3]


def test_dense_cmp_guides_only_keypoints_visible_at_both_ends(tiny_cmp):
    width = height = 128
    xy, score = random_motion(frames=3, width=width, height=height, seed=9)
    score[1, :10] = 0.0
    image = np.full((height, width, 3), 127, np.uint8)
    captured = []
    original = tiny_cmp.flow

    def spy(features, sparse):
        captured.append(sparse.clone())
        return original(features, sparse)

    tiny_cmp.flow = spy
    try:
        dense_motion_field_cmp(tiny_cmp, image, pose_frames(xy, score, width, height))
    finally:
        del tiny_cmp.flow
    mask = captured[0][:, 2]
    assert mask[0].sum() == 8 and mask[1].sum() == 18  # 18 joints; frame 1 lost 10 of them
    r, c = (xy[0, 12, 1] * 3).astype(int), (xy[0, 12, 0] * 3).astype(int)
    assert captured[0][1, 0, r, c] == pytest.approx((xy[2, 12, 0] - xy[0, 12, 0]) * 3, abs=1e-4)


# ------------------------------------------------------------------------------------ errors
def test_errors_for_bad_inputs(tiny_cmp):
    xy, score = random_motion(frames=3)
    frames = pose_frames(xy, score, 160, 120)
    with pytest.raises(MarionetteError, match="at least one driving pose"):
        sparse_motion_field(frames[:1])
    with pytest.raises(NoPersonError):
        sparse_motion_field(pose_frames(xy, np.zeros_like(score), 160, 120))
    with pytest.raises(NoPersonError):
        sparse_motion_field([empty_frame(160, 120), empty_frame(160, 120)])
    with pytest.raises(MarionetteError, match="different canvases"):
        sparse_motion_field(frames[:2] + [PoseFrame(320, 240, frames[2].body * 2, frames[2].left_hand,
                                                    frames[2].right_hand, frames[2].face)])
    with pytest.raises(MarionetteError, match="aspect ratio"):
        sparse_motion_field(frames, height=120, width=120)
    with pytest.raises(MarionetteError, match="odd kernel"):
        sparse_motion_field(frames, kernel_size=198)
    with pytest.raises(MarionetteError, match="aspect ratio"):
        dense_motion_field_cmp(tiny_cmp, np.zeros((64, 64, 3), np.uint8), frames)
    with pytest.raises(MarionetteError, match="not \\[H, W, 3\\]"):
        dense_motion_field_cmp(tiny_cmp, np.zeros((3, 120, 160), np.uint8), frames)
