"""People cut by the frame edge: joints beyond the edge are absent, not invented (rendered truth).

Provocation: the synthetic actor walks and waves (2 clips × 12 frames, 512²); the frames are cut at
45 % and 60 % of the body's height, so hips, knees and ankles fall outside. The embedded backend,
video mode: no joint lying more than 5 % of the body's height beyond the edge is reported (0 of 192;
before 0 too: the renders do not make the model fold the legs, the real people of
tests/test_realdata_pose.py do); joints within 5 % beyond the edge are reported on the edge (25 of 58,
before 30); every joint inside is still reported (417 of 417).
"""
import numpy as np
import pytest
from harness import MEDIAPIPE

MARGIN = 0.05


@pytest.fixture(scope="module")
def clips():
    from marionette.models.synthetic import render_driving_clip
    return [render_driving_clip(frames=12, width=512, height=512, motion="walk+wave", seed=s) for s in (0, 5)]


def test_joints_beyond_the_edge_are_absent(clips):
    from marionette.models.pose.blazepose import BlazePoseEstimator
    est = BlazePoseEstimator(str(MEDIAPIPE), num_threads=1)
    far = near = inside = 0
    far_n = near_n = inside_n = 0
    for clip in clips:
        gt = clip.joints2d
        vis = gt[..., 2] > 0
        top = min(gt[t, vis[t], 1].min() for t in range(len(gt)))
        bottom = max(gt[t, vis[t], 1].max() for t in range(len(gt)))
        for fraction in (0.45, 0.6):
            cut = int(top + fraction * (bottom - top))
            poses = est(np.ascontiguousarray(clip.frames[:, :cut]), track=True)
            for pose, truth in zip(poses, gt):
                body = pose.body[0] if pose.num_people else np.zeros((18, 3))
                reported = body[:14, 2] > 0.3
                y, seen = truth[:14, 1], truth[:14, 2] > 0
                beyond = seen & (y >= cut + MARGIN * (bottom - top))
                edge = seen & (y >= cut) & ~beyond
                within = seen & (y < cut - MARGIN * (bottom - top))
                assert (body[:14][reported, 1] <= cut).all()  # whatever is reported lies in the frame
                far += int((reported & beyond).sum())
                near += int((reported & edge).sum())
                inside += int((reported & within).sum())
                far_n, near_n, inside_n = far_n + beyond.sum(), near_n + edge.sum(), inside_n + within.sum()
    print(f"\nbeyond the edge reported {far}/{far_n}, at the edge {near}/{near_n}, inside {inside}/{inside_n}")
    assert far == 0
    assert inside == inside_n
