"""Accuracy of the embedded BlazePose backend against rendered ground truth (synthetic anny people).

PCK@0.1 of the 14 body joints (nose, neck, shoulders, elbows, wrists, hips, knees, ankles),
normalised by the diagonal of the visible GT joints' bbox and counting only GT-visible joints,
must reach 0.8 on the driving clip, a portrait clip with other motions, and the reference image.
Run with `-s` to see the numbers (overall, per joint, and PCK@0.05).
"""

import numpy as np
import pytest
from harness import MEDIAPIPE

from marionette.models.pose.types import OPENPOSE_BODY

MIN_PCK = 0.8
SWAP_LR = [0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16]


@pytest.fixture(scope="module")
def estimator():
    from marionette.models.pose.blazepose import BlazePoseEstimator
    return BlazePoseEstimator(str(MEDIAPIPE), hands=False, face=False)


@pytest.fixture(scope="module")
def cases():
    from marionette.models.synthetic import render_driving_clip, render_reference
    return {"driving 512² walk+wave+turn": render_driving_clip(frames=24, width=512, height=512, seed=0),
            "portrait 576x1024 arms+squat+turn": render_driving_clip(frames=16, width=576, height=1024,
                                                                     motion="arms+squat+turn", seed=4),
            "reference 512x768": render_reference(width=512, height=768, seed=1)}


def _report(name, pred, clip):
    from marionette.models.synthetic.metrics import BODY_JOINTS, normalized_errors, pck, pck_per_joint
    p10, p05 = pck(pred, clip, alpha=0.1), pck(pred, clip, alpha=0.05)
    per = pck_per_joint(pred, clip, alpha=0.1)
    per05 = pck_per_joint(pred, clip, alpha=0.05)
    err = normalized_errors(pred, clip)[:, list(BODY_JOINTS)]
    err = err[np.isfinite(err)]
    print(f"\n{name}: frames {clip.num_frames}, PCK@0.1 {p10:.3f}, PCK@0.05 {p05:.3f}, "
          f"error/bbox-diagonal mean {err.mean():.4f} max {err.max():.4f}")
    print("  " + ", ".join(f"{OPENPOSE_BODY[j]} {a:.2f}/{b:.2f}" for j, a, b in zip(BODY_JOINTS, per, per05)))
    return p10, p05


def test_blazepose_pck_on_synthetic_people(estimator, cases):
    failures = []
    for name, clip in cases.items():
        pred = estimator(clip.frames, track=True)
        assert len(pred) == clip.num_frames
        p10, _ = _report(name, pred, clip)
        if not p10 >= MIN_PCK:
            failures.append(f"{name}: PCK@0.1 = {p10:.3f} < {MIN_PCK}")
    assert not failures, "; ".join(failures)


def test_blazepose_left_and_right_agree_with_the_ground_truth(estimator, cases):
    from marionette.models.synthetic.metrics import pck
    clip = cases["driving 512² walk+wave+turn"]
    pred = estimator(clip.frames, track=True)
    body = np.stack([f.body[0] if f.num_people else np.zeros((18, 3), np.float32) for f in pred])
    right, swapped = pck(body, clip, alpha=0.05), pck(body[:, SWAP_LR], clip, alpha=0.05)
    print(f"\nPCK@0.05 as predicted {right:.3f}, with left/right swapped {swapped:.3f}")
    assert right > swapped + 0.3, (right, swapped)
