"""POSE_KEYPOINT encode/decode: controlnet_aux structure, real scores kept, lenient but clear decoding."""
import json

import numpy as np
import pytest

from marionette.models.errors import MarionetteError
from marionette.models.pose.keypoint_json import (SCORES_KEY, frames_to_pose_keypoint, pose_keypoint_to_frames,
                                                  frames_to_json)
from marionette.models.pose.types import PoseFrame, empty_frame

PART_ATTRS = ("body", "left_hand", "right_hand", "face")
STD_KEYS = {"pose_keypoints_2d": ("body", 18), "face_keypoints_2d": ("face", 70),
            "hand_left_keypoints_2d": ("left_hand", 21), "hand_right_keypoints_2d": ("right_hand", 21)}


def random_frame(rng, people=2, w=640, h=480, low_fraction=0.2, missing_fraction=0.2):
    """People with visible, faint (0 < s < 0.3) and missing (s = 0) points."""
    def part(n):
        a = np.zeros((people, n, 3), np.float32)
        a[..., 0] = rng.uniform(1, w - 1, (people, n))
        a[..., 1] = rng.uniform(1, h - 1, (people, n))
        a[..., 2] = rng.uniform(0.3, 1.0, (people, n))
        u = rng.uniform(size=(people, n))
        low = u < low_fraction
        a[..., 2][low] = rng.uniform(0.01, 0.29, low.sum())
        a[u > 1 - missing_fraction] = 0.0
        return a
    return PoseFrame(w, h, part(18), part(21), part(21), part(68))


def controlnet_aux_decode(frame_dict):
    """Independent mirror of controlnet_aux decode_json_as_poses: c < 1.0 -> None, else (x, y)."""
    def decompress(numbers):
        if not numbers:
            return None
        assert len(numbers) % 3 == 0
        return [None if c < 1.0 else (x, y) for x, y, c in zip(numbers[0::3], numbers[1::3], numbers[2::3])]
    people = [{k: decompress(p.get(k)) for k in STD_KEYS} for p in frame_dict.get("people", [])]
    return people, frame_dict["canvas_height"], frame_dict["canvas_width"]


def test_round_trip_keeps_scores_and_faint_points():
    rng = np.random.default_rng(0)
    frames = [random_frame(rng, people=p) for p in (0, 1, 3)]
    data = frames_to_pose_keypoint(frames)
    back = pose_keypoint_to_frames(json.loads(json.dumps(data)))
    assert len(back) == 3
    for f, g in zip(frames, back):
        assert (g.width, g.height, g.num_people) == (f.width, f.height, f.num_people)
        for attr in PART_ATTRS:
            np.testing.assert_array_equal(getattr(g, attr), getattr(f, attr))


def test_structure_matches_controlnet_aux():
    rng = np.random.default_rng(1)
    frame = random_frame(rng, people=2)
    data = frames_to_pose_keypoint([frame])
    assert isinstance(data, list) and len(data) == 1
    d = data[0]
    assert set(d) == {"people", "canvas_height", "canvas_width"}
    assert (d["canvas_height"], d["canvas_width"]) == (480, 640)
    assert type(d["canvas_height"]) is int
    bare = frames_to_pose_keypoint([frame], with_scores=False)[0]
    assert set(bare["people"][0]) == set(STD_KEYS)
    assert set(d["people"][0]) == set(STD_KEYS) | {SCORES_KEY}
    for person in d["people"]:
        for key, (_, n) in STD_KEYS.items():
            values = person[key]
            assert isinstance(values, list) and len(values) == 3 * n  # flat, not nested
            assert all(type(v) is float for v in values)
            assert set(values[2::3]) <= {0.0, 1.0}
            for x, y, c in zip(values[0::3], values[1::3], values[2::3]):
                if c == 0.0:
                    assert x == 0.0 and y == 0.0


def test_independent_decoder_agrees_on_visibility_and_face_eyes():
    rng = np.random.default_rng(2)
    frame = random_frame(rng, people=2)
    people, h, w = controlnet_aux_decode(frames_to_pose_keypoint([frame])[0])
    assert (h, w) == (frame.height, frame.width)
    for p, decoded in enumerate(people):
        for key, (attr, n) in STD_KEYS.items():
            pts = getattr(frame, attr)[p]
            if attr == "face":  # OpenPose 70: 68 face points then body 14 and 15
                pts = np.concatenate([pts, frame.body[p, [14, 15]]])
            got = decoded[key]
            for j in range(n):
                if pts[j, 2] >= 0.3:
                    assert got[j] == pytest.approx((pts[j, 0], pts[j, 1]))
                else:
                    assert got[j] is None


def test_empty_parts_are_none_and_body_is_zeros():
    frame = empty_frame(100, 50, people=1)
    frame.body[0, 1] = (10, 20, 0.9)
    frame.left_hand[0, :, 2] = 0.1  # faint only: no visible point -> None in the standard keys
    frame.left_hand[0, :, :2] = 5
    person = frames_to_pose_keypoint([frame])[0]["people"][0]
    assert person["face_keypoints_2d"] is None
    assert person["hand_right_keypoints_2d"] is None
    assert person["hand_left_keypoints_2d"] is None
    assert person["pose_keypoints_2d"][3:6] == [10.0, 20.0, 1.0]
    assert sum(person["pose_keypoints_2d"]) == 31.0
    back = pose_keypoint_to_frames(frames_to_pose_keypoint([frame]))[0]
    np.testing.assert_allclose(back.left_hand[0], frame.left_hand[0])  # faint points restored
    nobody = empty_frame(100, 50, people=1)
    assert frames_to_pose_keypoint([nobody])[0]["people"][0]["pose_keypoints_2d"] == [0.0] * 54


def test_zero_people_and_single_dict_and_json_text():
    frame = empty_frame(32, 16)
    data = frames_to_pose_keypoint(frame)
    assert data == [{"people": [], "canvas_height": 16, "canvas_width": 32}]
    for form in (data[0], json.dumps(data), json.dumps(data[0]), [json.dumps(data)], frames_to_json([frame])):
        back = pose_keypoint_to_frames(form)
        assert len(back) == 1 and back[0].num_people == 0 and (back[0].width, back[0].height) == (32, 16)


def test_foreign_json_without_scores_nested_lists_and_missing_keys():
    body = [[0.0, 0.0, 0.0]] * 18
    body[1] = [50.0, 60.0, 1.0]
    body[2] = [40.0, 61.0, 0.7]    # an OpenPose-style real confidence
    face = [[float(i), float(i + 1), 1.0] for i in range(70)]
    data = {"people": [{"pose_keypoints_2d": body, "face_keypoints_2d": face}],  # hands keys absent
            "canvas_height": 200, "canvas_width": 100}
    frame = pose_keypoint_to_frames(data)[0]
    assert frame.num_people == 1
    np.testing.assert_allclose(frame.body[0, 1], (50, 60, 1.0))
    np.testing.assert_allclose(frame.body[0, 2], (40, 61, 0.7), rtol=1e-6)
    assert (frame.body[0, [0] + list(range(3, 18)), 2] == 0).all()
    np.testing.assert_allclose(frame.face[0, 67], (67, 68, 1.0))
    assert (frame.left_hand == 0).all() and (frame.right_hand == 0).all()


def test_edited_points_win_over_stale_scores():
    frame = empty_frame(100, 100, people=1)
    frame.body[0, 0] = (30, 30, 0.8)
    data = frames_to_pose_keypoint([frame])
    person = data[0]["people"][0]
    person["pose_keypoints_2d"][3:6] = [70.0, 70.0, 1.0]  # an editor adds the neck
    person["pose_keypoints_2d"][0:3] = [0.0, 0.0, 0.0]    # and deletes the nose
    back = pose_keypoint_to_frames(data)[0]
    np.testing.assert_allclose(back.body[0, 1], (70, 70, 1.0))
    assert back.body[0, 0, 2] == 0


def test_body25_and_normalised_coordinates():
    body25 = [0.0] * 75
    body25[8 * 3:8 * 3 + 3] = [0.5, 0.5, 1.0]    # mid-hip: dropped
    body25[9 * 3:9 * 3 + 3] = [0.25, 0.75, 1.0]  # right hip -> COCO-18 index 8
    frame = pose_keypoint_to_frames([{"people": [{"pose_keypoints_2d": body25}],
                                      "canvas_width": 400, "canvas_height": 200}])[0]
    np.testing.assert_allclose(frame.body[0, 8], (100, 150, 1.0))  # 0..1 values scaled to the canvas
    assert frame.body[0, :, 2].sum() == 1.0


def test_missing_canvas_uses_given_size_or_explains():
    data = {"people": []}
    assert pose_keypoint_to_frames(data, canvas_size=(64, 48))[0].width == 64
    with pytest.raises(MarionetteError, match="canvas_width"):
        pose_keypoint_to_frames(data)


@pytest.mark.parametrize("bad, words", [
    ("{not json", "not valid JSON"),
    (42, "dict or a list"),
    ([{"people": "x", "canvas_width": 4, "canvas_height": 4}], "'people'"),
    ([{"people": [[1, 2, 3]], "canvas_width": 4, "canvas_height": 4}], "person 0"),
    ([{"people": [{"pose_keypoints_2d": [1.0] * 10}], "canvas_width": 4, "canvas_height": 4}], "triples"),
    ([{"people": [{"pose_keypoints_2d": [1.0] * 51}], "canvas_width": 4, "canvas_height": 4}], "17 points"),
    ([{"people": [{"pose_keypoints_2d": ["a"] * 54}], "canvas_width": 4, "canvas_height": 4}], "non-numeric"),
    ([{"people": [{"pose_keypoints_2d": [float("nan")] * 54}], "canvas_width": 4, "canvas_height": 4}], "NaN"),
    ([{"people": [], "canvas_width": 0, "canvas_height": 4}], "empty canvas"),
])
def test_malformed_input_raises_clear_errors(bad, words):
    with pytest.raises(MarionetteError, match=words) as e:
        pose_keypoint_to_frames(bad)
    assert e.value.fix


def test_encoder_rejects_non_frames():
    with pytest.raises(MarionetteError, match="PoseFrame"):
        frames_to_pose_keypoint([{"people": []}])


def test_world_points_travel_under_their_own_key():
    rng = np.random.default_rng(5)
    frame = random_frame(rng, people=2)
    frame.world = rng.normal(0, 0.3, (2, 18, 3)).astype(np.float32)
    data = frames_to_pose_keypoint([frame])
    assert len(data[0]["people"][0]["marionette_world"]) == 54
    assert "marionette_world" not in frames_to_pose_keypoint([frame], with_scores=False)[0]["people"][0]
    (back,) = pose_keypoint_to_frames(json.loads(json.dumps(data)))
    np.testing.assert_array_equal(back.world, frame.world)
    np.testing.assert_array_equal(back.person(1).world, frame.world[1:])
    data[0]["people"][1]["marionette_world"] = [0.0] * 5  # malformed: ignored, 2D kept
    (back,) = pose_keypoint_to_frames(data)
    assert back.world is None and back.num_people == 2
    (plain,) = pose_keypoint_to_frames(frames_to_pose_keypoint([random_frame(rng, people=1)]))
    assert plain.world is None
