"""Tier 2, in the real host: LoadReference reports what its crop cuts off, PoseAlign its trust in the fit."""
import numpy as np
import pytest
import torch

from marionette.models.pose.keypoint_json import frames_to_pose_keypoint
from marionette.models.pose.types import empty_frame

BODY = np.array([  # an upright person in a 576 x 1024 portrait (OpenPose-18 pixels)
    (288, 150), (288, 230), (230, 232), (215, 330), (205, 420), (346, 232), (361, 330), (371, 420),
    (250, 480), (248, 650), (246, 820), (326, 480), (328, 650), (330, 820), (275, 135), (301, 135),
    (262, 145), (314, 145)], np.float64)


def pose(height=1024, hidden=()):
    frame = empty_frame(576, height, 1)
    frame.body[0, :, :2] = BODY
    frame.body[0, :, 2] = 0.9
    frame.body[0, list(hidden), 2] = 0.0
    return frames_to_pose_keypoint([frame])


def test_load_reference_names_what_the_crop_cuts(comfy_host, synthetic_media):
    node = comfy_host.node_class("LoadReference")()
    picture = torch.from_numpy(synthetic_media["reference"].frames[:1]).float() / 255
    whole = node.load("", "512x768", "crop_person", 64, 64, reference_image=picture)
    status = whole["ui"]["marionette_reference"][0]
    assert status["cut"] == [] and status["note"] == "" and status["face_source"] == "detector"
    assert whole["result"][3][0] is not None and status["face_score"] > 0.5
    wide = node.load("", "1024x576", "crop_person", 64, 64, reference_image=picture)["ui"]["marionette_reference"][0]
    assert "r_ankle" in wide["cut"] and "nose" not in wide["cut"] and "r_ankle" in wide["note"]


def test_pose_align_warns_and_stops_on_untrustworthy_fits(comfy_host):
    node = comfy_host.node_class("PoseAlign")()
    driving = pose()
    fine = node.align(pose(), driving, "mimicmotion")["ui"]["marionette_fit"][0]
    assert fine["trust"] == "ok" and fine["warnings"] == [] and fine["off_canvas"] == 0.0
    half = pose(height=560, hidden=(9, 10, 12, 13))           # a photo cut below the hips
    out = node.align(half, driving, "mimicmotion")
    status = out["ui"]["marionette_fit"][0]
    assert status["trust"] == "warn" and "outside the reference image" in status["warnings"][0]
    assert tuple(out["result"][2].shape) == (1, 560, 576, 3)
    cut = pose(height=470, hidden=(8, 9, 10, 11, 12, 13))     # cut above the hips: a third off the canvas
    with pytest.raises(ValueError, match="cannot be trusted") as e:
        node.align(cut, driving, "mimicmotion")
    assert 'untrusted_fit to "warn"' in str(e.value)
    kept = node.align(cut, driving, "mimicmotion", untrusted_fit="warn")["ui"]["marionette_fit"][0]
    assert kept["trust"] == "stop" and kept["warnings"]
