"""Flow colouring: the Middlebury colour code as the official flow_to_image draws it."""
import math

import numpy as np
import pytest
import torch

from marionette.models.dispose.flow_vis import colour_wheel, flow_to_rgb
from marionette.models.errors import MarionetteError


def wheel_by_segments():
    """The Middlebury wheel written out colour by colour: (start RGB, end RGB, length) per segment, each
    entry start + floor(255 * i / length) towards the end colour on the one changing channel."""
    corners = [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255), (255, 0, 0)]
    wheel = []
    for (a, b, n) in zip(corners, corners[1:], (15, 6, 4, 11, 13, 6)):
        for i in range(n):
            step = math.floor(255 * i / n)
            wheel.append(tuple(x + (step if y > x else -step if y < x else 0) for x, y in zip(a, b)))
    return wheel


def pixel_colour(u, v, wheel):
    """One normalised vector -> RGB, scalar arithmetic in the official order."""
    n = len(wheel)
    rad = math.sqrt(u * u + v * v)
    fk = (math.atan2(-v, -u) / math.pi + 1) / 2 * (n - 1) + 1  # 1-based as in the official code
    k0 = math.floor(fk)
    k1 = 1 if k0 + 1 == n + 1 else k0 + 1
    f = fk - k0
    out = []
    for ch in range(3):
        col0, col1 = wheel[k0 - 1][ch] / 255, wheel[k1 - 1][ch] / 255
        col = (1 - f) * col0 + f * col1
        col = 1 - rad * (1 - col) if rad <= 1 else col * 0.75
        out.append(math.floor(255 * col))
    return tuple(out)


def test_wheel_matches_segment_definition():
    assert [tuple(int(c) for c in row) for row in colour_wheel()] == wheel_by_segments()


def test_colours_match_scalar_rederivation_with_per_frame_scale():
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 6, (2, 2, 7, 9))
    flow[1] *= 0.2  # a small flow: the official scale never goes below 5 px
    flow[0, :, 0, 0] = 0.0
    out = flow_to_rgb(torch.from_numpy(flow))
    assert out.shape == (2, 7, 9, 3) and out.dtype == np.uint8
    wheel = wheel_by_segments()
    for i in range(2):
        radius = max(5.0, np.sqrt((flow[i] ** 2).sum(0)).max()) + np.finfo(float).eps
        for y in range(7):
            for x in range(9):
                expected = pixel_colour(flow[i, 0, y, x] / radius, flow[i, 1, y, x] / radius, wheel)
                assert tuple(out[i, y, x]) == expected, (i, y, x)
    assert tuple(out[0, 0, 0]) == (255, 255, 255)  # no motion is white


def test_direction_landmarks_and_scales():
    flow = np.zeros((4, 2, 1, 1))
    flow[:, :, 0, 0] = [(10, 0), (-10, 0), (0, -10), (0, 10)]  # right, left, up, down at full radius
    rgb = flow_to_rgb(flow)[:, 0, 0]
    assert tuple(rgb[0]) == (255, 0, 0)  # right (v = +0.0, atan2 gives -pi): red
    assert tuple(rgb[1]) == (0, 209, 255)  # left: cyan
    assert rgb[2][2] == 255 and rgb[2][0] > rgb[2][1]  # up: blue-violet
    assert rgb[3][0] == 255 and rgb[3][1] > 200 and rgb[3][2] == 0  # down: orange-yellow
    doubled = np.concatenate([flow, flow * 2])
    shared = flow_to_rgb(doubled, shared_scale=True)
    assert (shared[:4] > shared[4:]).any(axis=-1).all()  # the smaller vectors are paler under one scale
    fixed = flow_to_rgb(flow, max_radius=5.0)[:, 0, 0]  # twice the radius: darkened to 75 %
    assert tuple(fixed[0]) == (191, 0, 0) and tuple(fixed[1]) == (0, 156, 191)


def test_single_field_unknown_values_and_errors():
    flow = torch.zeros(2, 3, 4)
    flow[0, 1, 1] = 2e7  # "unknown" flow is drawn black
    flow[1, 2, 2] = float("nan")
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (1, 3, 4, 3)
    assert tuple(rgb[0, 1, 1]) == (0, 0, 0) and tuple(rgb[0, 2, 2]) == (0, 0, 0)
    assert tuple(rgb[0, 0, 0]) == (255, 255, 255)
    with pytest.raises(MarionetteError, match=r"\[N, 2, H, W\]"):
        flow_to_rgb(np.zeros((3, 4, 4)))
