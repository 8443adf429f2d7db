"""The download-free FALLBACK dense field: keypoint displacements interpolated over the person mask."""
import numpy as np
import pytest
import torch
from test_dispose_motion import pose_frames

from marionette.models.dispose.fallback_field import dense_motion_field_fallback, interpolate_displacements
from marionette.models.errors import MarionetteError, NoPersonError

WIDTH, HEIGHT = 120, 160


def body_scene(seed=0):
    """Reference joints on a 'body' ellipse mask at integer pixels, >= 12 px apart, three driving frames
    with smooth random motion (up to ~12 px), joint 9 missing in frame 2."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    mask = ((xx - 60) / 40.0) ** 2 + ((yy - 80) / 70.0) ** 2 <= 1
    points = []
    while len(points) < 18:
        p = rng.integers([25, 15], [96, 146])
        if mask[p[1], p[0]] and all(np.abs(p - q).max() >= 12 for q in points):
            points.append(p)
    ref = np.array(points, float)
    xy = np.stack([ref] + [ref + rng.normal(0, 4, (18, 2)) for _ in range(3)])
    score = np.ones((4, 18))
    score[2, 9] = 0.0
    return xy, score, mask


def test_fallback_reproduces_keypoint_displacements_and_stays_in_mask():
    xy, score, mask = body_scene()
    field = dense_motion_field_fallback(pose_frames(xy, score, WIDTH, HEIGHT), mask)
    assert field.shape == (3, 2, HEIGHT, WIDTH) and field.dtype == torch.float32
    cols, rows = xy[0, :, 0].astype(int), xy[0, :, 1].astype(int)
    for t in range(3):
        at_joints = field[t][:, rows, cols].T.numpy()
        expected = xy[t + 1] - xy[0]
        usable = score[t + 1] > 0.3
        assert np.abs(at_joints[usable] - expected[usable]).max() < 1e-3
    assert field[:, :, ~torch.from_numpy(mask)].abs().max() == 0
    # joint 9 is missing in frame 2: the field there follows its neighbours, not a jump to the corner
    assert np.abs(field[1][:, rows[9], cols[9]].numpy()).max() <= np.abs(xy[2] - xy[0]).max() + 1e-4


def test_fallback_is_smooth_and_bounded():
    xy, score, mask = body_scene(seed=1)
    field = dense_motion_field_fallback(pose_frames(xy, score, WIDTH, HEIGHT), mask)
    inside = torch.from_numpy(mask)
    both_x = inside[:, 1:] & inside[:, :-1]
    both_y = inside[1:] & inside[:-1]
    largest = np.abs(xy[1:] - xy[:1]).max()
    for t in range(3):
        step_x = (field[t, :, :, 1:] - field[t, :, :, :-1]).abs().amax(0)[both_x].max()
        step_y = (field[t, :, 1:] - field[t, :, :-1]).abs().amax(0)[both_y].max()
        # neighbouring pixels differ by a small fraction of the motion (a nearest-joint field would jump)
        assert max(step_x, step_y) < 0.25 * largest
        assert field[t].abs().max() <= largest + 1e-4  # a convex combination of joint displacements


def test_nearest_joint_field_would_fail_the_smoothness_bound():
    """The bound above can fail: a Voronoi (nearest-joint) field over the same scene jumps by more."""
    xy, _, mask = body_scene(seed=1)
    anchors = torch.from_numpy(xy[0]).float()
    vectors = torch.from_numpy(xy[1] - xy[0]).float()
    ys, xs = np.nonzero(mask)
    query = torch.from_numpy(np.stack([xs, ys], 1)).float()
    nearest = vectors[torch.cdist(query, anchors).argmin(1)]
    grid = torch.zeros(HEIGHT, WIDTH, 2)
    grid[ys, xs] = nearest
    jump = (grid[:, 1:] - grid[:, :-1]).abs().amax(-1)[torch.from_numpy(mask[:, 1:] & mask[:, :-1])].max()
    assert jump >= 0.25 * np.abs(xy[1] - xy[0]).max()
    smooth = interpolate_displacements(anchors, vectors, query, sigma=20.0)
    assert torch.allclose(interpolate_displacements(anchors, vectors, anchors, 20.0), vectors, atol=1e-4)
    assert smooth.abs().max() <= vectors.abs().max() + 1e-5


def test_fallback_soft_mask_whole_canvas_and_errors():
    xy, score, mask = body_scene(seed=2)
    frames = pose_frames(xy, score, WIDTH, HEIGHT)
    whole = dense_motion_field_fallback(frames)
    assert whole.shape == (3, 2, HEIGHT, WIDTH) and whole[:, :, 0, 0].abs().max() > 0
    soft = dense_motion_field_fallback(frames, torch.from_numpy(mask).float() * 0.5)
    hard = dense_motion_field_fallback(frames, (mask * 255).astype(np.uint8))
    assert torch.allclose(soft * 2, hard, atol=1e-5)
    assert torch.allclose(hard, whole * torch.from_numpy(mask), atol=1e-5)
    with pytest.raises(MarionetteError, match="mask is 120x160 but the motion field is 240x320"):
        dense_motion_field_fallback(frames, mask, height=320, width=240)
    with pytest.raises(MarionetteError, match="not \\[H, W\\]"):
        dense_motion_field_fallback(frames, np.zeros((2, HEIGHT, WIDTH)))
    with pytest.raises(MarionetteError, match="at least one driving pose"):
        dense_motion_field_fallback(frames[:1], mask)
    no_reference = score.copy()
    no_reference[0] = 0
    with pytest.raises(NoPersonError):
        dense_motion_field_fallback(pose_frames(xy, no_reference, WIDTH, HEIGHT), mask)
