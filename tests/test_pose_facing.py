"""Back views and turns: no face on the back of the head, left and right never swapped.

Provocation with ground truth: the synthetic actor (anny) turns a full circle on the spot, 48
frames, seen by a static camera; the renderer knows every joint and which are hidden (the nose is
hidden from about 115° to 245°). Measured with the embedded backend (two appearances):

| | before | now |
|---|---|---|
| frames 120°–240° with a face drawn (nose, eyes or the 68 points) | 16 of 16 | 0 |
| frames with the nose reported while it is hidden | 18 of 18 | 2 (the profile frames at 115° and 245°) |
| frames with left/right swapped | 0 | 0 |
| swapped frames injected into the estimate (stretches and single frames) left after the clip pass | - | 0 |
"""
import numpy as np
import pytest
from harness import MEDIAPIPE

from marionette.models.pose import sides as SD
from marionette.models.pose.blazepose.head import FACE_HIDDEN_BELOW, face_hidden, facing
from marionette.models.pose.smoothing import smooth_frames, tracks
from marionette.models.pose.types import PoseFrame

PAIRS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13))
FRAMES = 48


def spin_clip(seed: int):
    """The actor turning 360° to its left, relaxed arms, in a room (frame i at 360·i/(FRAMES−1) degrees)."""
    from marionette.models.synthetic.actor import DRIVER, Z, _neutral, rotation
    from marionette.models.synthetic.clip import render_actor
    from marionette.models.synthetic.scene import Appearance
    poses = []
    for i in range(FRAMES):
        pose: dict = {}
        _neutral(pose)
        pose["root"] = rotation(Z, 360.0 * i / (FRAMES - 1))
        poses.append(pose)
    return render_actor(DRIVER, poses, 384, 512, 12.0, "spin", Appearance.sample(seed), seed, 0.8)


@pytest.fixture(scope="module", params=[0, 3])
def spin(request):
    from marionette.models.pose.blazepose import BlazePoseEstimator
    clip = spin_clip(request.param)
    est = BlazePoseEstimator(str(MEDIAPIPE), num_threads=1)
    return clip, est(clip.frames, track=True)


def swapped_frames(poses, truth) -> int:
    """Frames whose paired joints sit clearly closer to the truth with left and right exchanged."""
    idx = [j for pair in PAIRS for j in pair]
    mirror = [j for a, b in PAIRS for j in (b, a)]
    count = 0
    for p, g in zip(poses, truth):
        seen = g[idx, 2] > 0
        if not p.num_people or not seen.any():
            continue
        diag = np.linalg.norm(np.ptp(g[g[:, 2] > 0, :2], axis=0))
        as_is = np.linalg.norm(p.body[0, idx, :2] - g[idx, :2], axis=1)[seen].mean()
        other = np.linalg.norm(p.body[0, mirror, :2] - g[idx, :2], axis=1)[seen].mean()
        count += int(other < 0.5 * as_is and as_is > 0.05 * diag)
    return count


def test_no_face_on_the_back_of_the_head(spin):
    clip, poses = spin
    back = [i for i in range(FRAMES) if 120 < 360 * i / (FRAMES - 1) < 240]
    shown = [i for i in back if (poses[i].body[0, [0, 14, 15], 2] > 0.3).any() or (poses[i].face[0, :, 2] > 0.3).any()]
    hidden_nose = np.flatnonzero(clip.joints2d[:, 0, 2] == 0)
    reported = [i for i in hidden_nose if poses[i].body[0, 0, 2] > 0.3]
    print(f"\nface drawn on {len(shown)} of {len(back)} back views; nose reported while hidden in "
          f"{len(reported)} of {len(hidden_nose)} frames")
    assert not shown
    assert len(reported) <= 2
    front = [i for i in range(FRAMES) if min(360 * i / (FRAMES - 1), 360 - 360 * i / (FRAMES - 1)) < 45]
    assert all((poses[i].face[0, :, 2] > 0.3).all() and (poses[i].body[0, [0, 14, 15], 2] > 0.3).all() for i in front)


def test_left_and_right_stay_on_their_side_through_the_turn(spin):
    clip, poses = spin
    assert swapped_frames(poses, clip.joints2d) == 0
    assert swapped_frames(smooth_frames(poses, "light"), clip.joints2d) == 0


def _mirror_frames(poses, which):
    out = []
    for t, p in enumerate(poses):
        if t in which:
            b, lh, rh = SD.mirrored(p.body[0].copy(), p.left_hand[0].copy(), p.right_hand[0].copy())
            p = PoseFrame(p.width, p.height, b[None], lh[None], rh[None], p.face.copy())
        out.append(p)
    return out


def test_injected_swaps_are_undone_and_clean_frames_left_alone(spin):
    clip, poses = spin
    assert all(np.array_equal(a.body, b.body) for a, b in zip(SD.consistent_sides(poses, tracks(poses)), poses))
    which = set(range(3, 9)) | {20, 30, 44}  # a stretch at the start of the turn and single frames
    broken = _mirror_frames(poses, which)
    assert swapped_frames(broken, clip.joints2d) >= 6
    fixed = SD.consistent_sides(broken, tracks(broken))
    assert swapped_frames(fixed, clip.joints2d) == 0
    assert all(np.allclose(a.body, b.body) for a, b in zip(fixed, poses))


def test_face_landmarks_overrule_mirrored_eye_labels():
    body = np.zeros((18, 3))
    body[14], body[15] = (100, 100, 1), (140, 100, 1)   # right eye at image left: a frontal face
    face = np.zeros((68, 3))
    face[36:42], face[42:48] = (101, 101, 1), (139, 99, 1)
    assert not SD.face_conflict(body, face)
    assert SD.face_conflict(body[list(SD.MIRROR_BODY)], face)


def test_facing_from_world_landmarks():
    world = np.zeros((33, 3))
    world[7], world[8] = (0.07, 0.0, 0.0), (-0.07, 0.0, 0.0)    # ears
    world[0] = (0.0, 0.0, -0.1)                                  # nose towards the camera
    assert facing(world) == pytest.approx(1.0) and not face_hidden(world)
    world[0] = (0.0, 0.0, 0.1)                                   # nose away: the back of the head
    assert facing(world) == pytest.approx(-1.0) and face_hidden(world)
    world[0] = (0.1, 0.0, 0.0)                                   # profile
    assert facing(world) == pytest.approx(0.0) and FACE_HIDDEN_BELOW < 0 and not face_hidden(world)
