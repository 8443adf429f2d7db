"""Image normalisation and the shared geometry helpers (models/vision/image.py)."""
import numpy as np
import pytest
import torch

from marionette.models.errors import MarionetteError
from marionette.models.vision.image import (Affine, check_rgb, letterbox, resize, to_float_image,
                                            to_rgb_uint8)


def test_float_batch_round_trips_through_uint8():
    rng = np.random.default_rng(0)
    x = rng.random((2, 5, 7, 3), dtype=np.float32)
    u = to_rgb_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (2, 5, 7, 3)
    assert np.abs(to_float_image(u) - x).max() <= 0.5 / 255 + 1e-6
    assert to_float_image(u).dtype == np.float32


def test_torch_input_matches_numpy_and_half_precision_works():
    x = torch.rand(1, 4, 6, 3)
    assert np.array_equal(to_rgb_uint8(x), to_rgb_uint8(x.numpy()))
    assert np.abs(to_rgb_uint8(x.half()).astype(int) - to_rgb_uint8(x).astype(int)).max() <= 1
    assert to_rgb_uint8(x.requires_grad_()).shape == (1, 4, 6, 3)


def test_grayscale_layouts_become_three_equal_channels():
    g = np.linspace(0, 1, 15, dtype=np.float32).reshape(3, 5)
    for a in (g[None, :, :, None], g[:, :, None], g[None]):  # [B,H,W,1], [H,W,1], [B,H,W]
        u = to_rgb_uint8(a)
        assert u.shape == (1, 3, 5, 3)
        assert np.array_equal(u[..., 0], u[..., 2]) and u[0, -1, -1, 1] == 255 and u[0, 0, 0, 0] == 0


def test_single_hwc_image_gets_a_batch_axis():
    assert to_rgb_uint8(np.zeros((8, 9, 3), np.float32)).shape == (1, 8, 9, 3)


def test_rgba_composites_over_background_or_drops_alpha():
    px = np.array([[[[1.0, 0.0, 0.0, 0.25]]]], np.float32)   # red, 25 % opaque
    over_white = to_rgb_uint8(px)[0, 0, 0]
    assert tuple(over_white) == (255, 191, 191)
    over_blue = to_rgb_uint8(px, background=(0, 0, 255))[0, 0, 0]
    assert tuple(over_blue) == (64, 0, 191)
    assert tuple(to_rgb_uint8(px, background=None)[0, 0, 0]) == (255, 0, 0)


def test_out_of_range_floats_are_clipped_and_uint8_passes_through():
    assert to_rgb_uint8(np.full((1, 2, 2, 3), 1.7, np.float32)).max() == 255
    assert to_rgb_uint8(np.full((1, 2, 2, 3), -0.3, np.float32)).min() == 0
    u = np.random.default_rng(1).integers(0, 256, (1, 3, 3, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(u), u)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((0, 4, 4, 3), np.float32), "empty"),
    (np.zeros((1, 0, 4, 3), np.float32), "zero size"),
    (np.zeros((1, 4, 4, 2), np.float32), "channels"),
    (np.zeros((1, 1, 4, 4, 3), np.float32), "Expected"),
    (np.zeros(5, np.float32), "Expected"),
    (np.zeros((1, 4, 4, 3), np.int32), "dtype"),
])
def test_bad_batches_raise_clear_errors(bad, words):
    with pytest.raises(MarionetteError, match=words):
        to_rgb_uint8(bad)


def test_nan_and_inf_are_rejected():
    x = np.zeros((1, 2, 2, 3), np.float32)
    x[0, 1, 1, 2] = np.nan
    with pytest.raises(MarionetteError, match="NaN"):
        to_rgb_uint8(x)
    x[0, 1, 1, 2] = np.inf
    with pytest.raises(MarionetteError, match="NaN or infinite"):
        to_rgb_uint8(torch.from_numpy(x))


def test_check_rgb_and_to_float_reject_wrong_inputs():
    with pytest.raises(MarionetteError):
        check_rgb(np.zeros((4, 4), np.uint8))
    with pytest.raises(MarionetteError):
        check_rgb(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(MarionetteError):
        to_float_image(np.zeros((2, 2, 3), np.float32))


def test_affine_compose_inverse_and_box():
    a = Affine.scale_shift(2.0, 3.0, 1.0, -1.0)
    b = Affine.scale_shift(0.5, 1.0, -4.0, 2.0)
    p = np.array([[3.0, 5.0], [0.0, 0.0]])
    assert np.allclose(a.then(b).apply(p), b.apply(a.apply(p)))
    assert np.allclose(a.inverse().apply(a.apply(p)), p)
    assert np.allclose(a.apply_box([0, 0, 2, 2]), [1, -1, 5, 5])


def test_warp_follows_the_continuous_pixel_convention():
    # doubling the size maps pixel (1, 2) [centre 1.5, 2.5] onto output pixels 2..3 × 4..5
    img = np.zeros((4, 4), np.float32)
    img[2, 1] = 1.0
    out = Affine.scale_shift(2, 2).warp(img, (8, 8), interpolation=0)  # nearest
    assert set(zip(*np.nonzero(out))) == {(4, 2), (4, 3), (5, 2), (5, 3)}


def test_resize_picks_area_for_shrink_and_keeps_float_masks_in_range():
    stripes = np.zeros((8, 8), np.float32)
    stripes[:, ::2] = 1.0
    assert np.allclose(resize(stripes, (4, 4)), 0.5)            # area averaging, no aliasing
    step = np.zeros((4, 4), np.float32)
    step[:, 2:] = 1.0
    up = resize(step, (16, 16))
    assert up.min() >= 0.0 and up.max() <= 1.0 and up.shape == (16, 16)


def test_letterbox_centres_the_image_and_its_map_hits_the_content():
    img = np.full((50, 100, 3), 200, np.uint8)
    out, t = letterbox(img, (128, 128), colour=(0, 0, 0))
    assert out.shape == (128, 128, 3)
    x0, y0 = t.apply([0, 0])
    x1, y1 = t.apply([100, 50])
    assert (x0, x1) == (0, 128) and (y0, y1) == (32, 96)
    assert out[31, 64, 0] == 0 and out[32, 64, 0] == 200 and out[95, 64, 0] == 200 and out[96, 64, 0] == 0
