"""Pose renderers: pixel checks against values worked out by hand from the reference drawing rules."""
import math

import numpy as np
import pytest

from marionette.models.errors import MarionetteError
from marionette.models.pose.draw import (draw_frames, draw_pose, draw_pose_mimicmotion, draw_pose_openpose,
                                         hand_edge_color, mimicmotion_canvas)
from marionette.models.pose.types import empty_frame

BIG = 2160  # MimicMotion's own canvas side: no resize, so pixels are exact


def body_frame(points, size=(BIG, BIG), people=1):
    """points: {index: (x, y, score)} for person 0's body."""
    f = empty_frame(size[0], size[1], people)
    for i, p in points.items():
        f.body[0, i] = p
    return f


NECK_SHOULDER = {1: (1000, 1000, 1.0), 2: (1200, 1000, 1.0)}  # limb 0, colour list entry (255, 0, 0)


def test_output_size_dtype_and_non_square_canvas():
    f = body_frame({1: (100, 50, 1.0), 2: (200, 50, 1.0)}, size=(300, 200))
    for img in (draw_pose_mimicmotion(f), draw_pose_openpose(f)):
        assert img.shape == (200, 300, 3) and img.dtype == np.uint8
    assert draw_pose_mimicmotion(f, 96, 160).shape == (160, 96, 3)
    assert draw_pose_openpose(f, 96, 160).shape == (160, 96, 3)
    # the big canvas: short side 2160, the long side scaled alike (300 * 10.8)
    assert mimicmotion_canvas(f, 300, 200).shape == (2160, 3240, 3)
    assert draw_frames([f, f], "openpose").shape == (2, 200, 300, 3)


def test_mimicmotion_limb_colour_dimming_and_channel_swap():
    f = body_frame(NECK_SHOULDER)
    img = draw_pose_mimicmotion(f)                       # as MimicMotion's PoseNet receives it
    assert tuple(img[1000, 1100]) == (0, 0, 153)         # (255,0,0) drawn as BGR, x 0.6, swapped to RGB
    assert tuple(img[1000, 1000]) == (0, 85, 255)        # neck joint (255,85,0), undimmed
    assert tuple(img[1000, 1200]) == (0, 170, 255)       # right shoulder joint (255,170,0)
    sa = draw_pose_mimicmotion(f, channel_order="stableanimator")  # StableAnimator's PNG read as RGB
    assert tuple(sa[1000, 1100]) == (153, 0, 0)
    assert tuple(sa[1000, 1000]) == (255, 85, 0)
    # dimming: the limb keeps 0.6 of the colour the joints get at the same confidence
    assert sa[1000, 1100, 0] / sa[1000, 1000, 0] == pytest.approx(0.6)
    assert sa[1010, 1100].sum() == 0                     # 10 px off the axis: outside a stick of 4


def test_mimicmotion_confidence_alpha():
    f = body_frame({1: (1000, 1000, 0.5), 2: (1200, 1000, 0.5)})
    sa = draw_pose_mimicmotion(f, channel_order="stableanimator")
    # limb: int(255 * 0.5 * 0.5) = 63, then int(63 * 0.6) = 37; joint: int(255 * 0.5) = 127, int(85 * 0.5) = 42
    assert tuple(sa[1000, 1100]) == (37, 0, 0)
    assert tuple(sa[1000, 1000]) == (127, 42, 0)


def test_mimicmotion_missing_and_threshold_joints():
    sa = draw_pose_mimicmotion(body_frame({1: (1000, 1000, 1.0), 2: (1200, 1000, 0.2)}),
                               channel_order="stableanimator")
    assert sa[1000, 1100].sum() == 0 and sa[1000, 1200].sum() == 0  # no limb, no joint
    assert tuple(sa[1000, 1000]) == (255, 85, 0)
    # score exactly 0.3: the limb test is `< 0.3` (drawn), the joint test `> 0.3` (not drawn)
    sa = draw_pose_mimicmotion(body_frame({1: (1000, 1000, 1.0), 2: (1200, 1000, 0.3)}),
                               channel_order="stableanimator")
    assert sa[1000, 1100, 0] > 0
    assert tuple(sa[1000, 1200]) == tuple(sa[1000, 1190])  # limb colour where the joint would be


def test_mimicmotion_limb_matches_hand_made_ellipse():
    a, b = (600.0, 700.0), (1400.0, 1300.0)
    sa = draw_pose_mimicmotion(body_frame({1: (*a, 1.0), 2: (*b, 1.0)}), draw_face=False, draw_hands=False,
                               channel_order="stableanimator")
    # reference rule: centre = int(mid), axes = (int(length/2), 4), angle = int(degrees) of the limb
    cx, cy = 1000, 1000
    semi, minor = 500, 4                 # length = hypot(800, 600) = 1000
    # angle = int(degrees(atan2(700 - 1300, 600 - 1400))) = int(-143.13) = -143, the same axis as 37
    ang = math.radians(-143)
    u = np.array([math.cos(ang), math.sin(ang)])
    v = np.array([-math.sin(ang), math.cos(ang)])
    ys, xs = np.mgrid[650:1350, 550:1450]
    d = np.stack([xs - cx, ys - cy], -1).astype(np.float64)
    q = (d @ u / semi) ** 2 + (d @ v / minor) ** 2
    near_joint = (np.hypot(xs - a[0], ys - a[1]) < 7) | (np.hypot(xs - b[0], ys - b[1]) < 7)
    patch = sa[650:1350, 550:1450]
    inside = (q < 0.5) & ~near_joint
    outside = (q > 1.8) & ~near_joint
    assert inside.sum() > 3000 and outside.sum() > 100000
    assert (patch[inside] == (153, 0, 0)).all()
    assert (patch[outside] == 0).all()


def test_mimicmotion_hand_edges_points_and_eps_rule():
    f = empty_frame(BIG, BIG, 1)
    f.left_hand[0, 0] = (500, 500, 1.0)
    f.left_hand[0, 1] = (600, 500, 1.0)    # edge 0: hue 0 -> (255, 0, 0)
    f.left_hand[0, 5] = (500, 700, 1.0)    # edge 4 (0 -> 5): hue 0.2 -> (204, 255, 0)
    f.right_hand[0, 0] = (0.5, 900, 1.0)   # integer x = 0: not above eps, not drawn
    f.right_hand[0, 1] = (3, 1000, 0.5)    # drawn: (0, 0, int(0.5 * 255)) in the BGR canvas
    sa = draw_pose_mimicmotion(f, channel_order="stableanimator")
    assert tuple(sa[500, 550]) == (255, 0, 0)
    assert tuple(sa[600, 500]) == (204, 255, 0)
    assert tuple(sa[500, 500]) == (0, 0, 255)  # hand points are (0, 0, score*255)
    assert sa[900, :6].sum() == 0
    assert tuple(sa[1000, 3]) == (0, 0, 127)
    mm = draw_pose_mimicmotion(f)  # MimicMotion's swapped order: the hand points come out red
    assert tuple(mm[500, 500]) == (255, 0, 0)
    # a faint edge: colour x int(0.5 * 0.5 * 255) = 63
    f.left_hand[0, 1, 2] = 0.25
    f.left_hand[0, 0, 2] = 1.0
    assert tuple(draw_pose_mimicmotion(f, channel_order="stableanimator")[500, 550]) == (63, 0, 0)


def test_hand_edge_colours_follow_hsv_wheel():
    assert hand_edge_color(0) == (1.0, 0.0, 0.0)
    assert hand_edge_color(10) == pytest.approx((0.0, 1.0, 1.0))   # hue 0.5: cyan
    assert hand_edge_color(15) == pytest.approx((0.5, 0.0, 1.0))   # hue 0.75
    assert hand_edge_color(4) == pytest.approx((0.8, 1.0, 0.0))


def test_mimicmotion_face_dots_and_eps():
    f = empty_frame(BIG, BIG, 1)
    f.face[0, 0] = (800, 800, 0.5)
    f.face[0, 1] = (800, 0.9, 1.0)  # integer y = 0: skipped
    sa = draw_pose_mimicmotion(f, channel_order="stableanimator")
    assert tuple(sa[800, 800]) == (127, 127, 127)
    assert tuple(sa[800, 803]) == (127, 127, 127) and sa[800, 805].sum() == 0  # radius 3
    assert sa[:5, 795:805].sum() == 0


def test_parts_can_be_drawn_separately():
    f = body_frame(NECK_SHOULDER)
    f.face[0, 0] = (300, 300, 1.0)
    f.left_hand[0, 0] = (1500, 1500, 1.0)
    for draw in (draw_pose_mimicmotion, draw_pose_openpose):
        only_body = draw(f, draw_hands=False, draw_face=False)
        assert only_body[1000, 1100].any() and not only_body[300, 300].any() and not only_body[1500, 1500].any()
        only_face = draw(f, draw_body=False, draw_hands=False)
        assert only_face[300, 300].any() and not only_face[1000, 1100].any()
        only_hands = draw(f, draw_body=False, draw_face=False)
        assert only_hands[1500, 1500].any() and not only_hands[300, 300].any()


def test_mimicmotion_resized_output_keeps_layout():
    # MimicMotion's portrait size: drawn 3.75x larger (2160 x 3840), then shrunk with cv2.resize
    f = body_frame({1: (200, 500, 1.0), 2: (400, 500, 1.0)}, size=(576, 1024))
    img = draw_pose_mimicmotion(f, channel_order="stableanimator")
    assert img.shape == (1024, 576, 3)
    band = img[497:504, 210:390].astype(int)
    assert (band[..., 0].max(axis=0) > 60).all() and (band[..., 1:] == 0).all()
    assert img[200, 500:505].sum() == 0
    ys, xs = np.nonzero(img.any(axis=2))
    assert ys.min() >= 496 and ys.max() <= 504 and xs.min() >= 196 and xs.max() <= 404
    # the joints survive the shrink with their own colours
    assert img[498:503, 198:203, 1].max() > 40                    # neck (255, 85, 0)
    assert img[498:503, 398:403, 1].max() > img[498:503, 198:203, 1].max()  # shoulder (255, 170, 0)


def test_openpose_style_full_colours_no_alpha():
    f = body_frame({1: (100, 100, 0.5), 2: (200, 100, 0.5)}, size=(400, 300))
    img = draw_pose_openpose(f)
    assert tuple(img[100, 150]) == (153, 0, 0)   # int(255 * 0.6), RGB as listed, no confidence fade
    assert tuple(img[100, 100]) == (255, 85, 0)  # full-colour joint
    assert img[108, 150].sum() == 0
    f.body[0, 2, 2] = 0.29                        # below 0.3: missing
    img = draw_pose_openpose(f)
    assert img[100, 150].sum() == 0 and img[100, 200].sum() == 0


def test_openpose_hands_face_and_eye_points():
    f = empty_frame(400, 300, 1)
    f.body[0, 14] = (150, 50, 0.9)                # right eye: the face list repeats it as a white dot
    f.face[0, 10] = (200, 60, 0.9)
    f.left_hand[0, 0] = (50, 200, 0.9)
    f.left_hand[0, 1] = (90, 200, 0.9)
    f.left_hand[0, 2] = (0.5, 250, 0.9)           # integer x = 0: skipped
    img = draw_pose_openpose(f)
    assert tuple(img[60, 200]) == (255, 255, 255)
    assert tuple(img[50, 150]) == (255, 255, 255)  # white radius 3 over the radius-4 eye joint
    assert tuple(img[50, 154]) == (170, 0, 255)    # the eye joint's own colour outside the dot
    assert tuple(img[200, 70]) == (255, 0, 0)      # edge 0, hue 0
    assert tuple(img[200, 50]) == (0, 0, 255)      # hand points blue
    assert img[250, :5].sum() == 0
    f.face[0, 10, 2] = 0.1                         # no visible face point: no face, no eye dots
    img = draw_pose_openpose(f)
    assert tuple(img[50, 150]) == (170, 0, 255)


def test_openpose_rescales_pixels_and_xinsr_sticks():
    f = body_frame({1: (100, 100, 1.0), 2: (200, 100, 1.0)}, size=(400, 300))
    img = draw_pose_openpose(f, 800, 600)
    assert tuple(img[200, 300]) == (153, 0, 0) and tuple(img[200, 200]) == (255, 85, 0)
    big = body_frame({1: (300, 600, 1.0), 2: (900, 600, 1.0)}, size=(1200, 1200))
    assert draw_pose_openpose(big)[610, 600].sum() == 0
    # xinsr: sides 1000..1999 px draw sticks 3x thicker (4 * (2 + 1200 // 1000))
    assert tuple(draw_pose_openpose(big, xinsr_stick_scaling=True)[610, 600]) == (153, 0, 0)


def test_multi_person_and_dispatch_errors():
    f = empty_frame(BIG, BIG, 2)
    f.body[0, 1], f.body[0, 2] = (300, 300, 1), (500, 300, 1)
    f.body[1, 1], f.body[1, 2] = (300, 1800, 1), (500, 1800, 1)
    for style in ("mimicmotion", "openpose"):
        img = draw_pose(f, style)
        assert img[300, 400].any() and img[1800, 400].any()
    with pytest.raises(MarionetteError, match="style"):
        draw_pose(f, "sketch")
    with pytest.raises(MarionetteError, match="channel order"):
        draw_pose_mimicmotion(f, channel_order="bgr")
    with pytest.raises(MarionetteError, match="no pose frames"):
        draw_frames([])
