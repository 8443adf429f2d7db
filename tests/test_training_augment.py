"""Crop-and-stretch augmentation (`training.augment`): boxes inside the frame, a stripe lands where the crop
and resize put it, every image of a window gets its sample's box."""
import pytest
import torch

from marionette.models.errors import MarionetteError
from marionette.models.training.augment import crop_and_resize, crop_box


def test_boxes_stay_inside_the_frame_within_the_stretch_and_follow_the_generator():
    assert crop_box(torch.Generator().manual_seed(0), 96, 128, 1.0) == (0, 0, 96, 128)
    boxes = [crop_box(torch.Generator().manual_seed(k), 96, 128, 1.5) for k in range(200)]
    for left, top, w, h in boxes:
        assert 64 <= w <= 96 and 85 <= h <= 128 and 0 <= left <= 96 - w and 0 <= top <= 128 - h
    ratios = {round(w / h * 128 / 96, 1) for _, _, w, h in boxes}
    assert min(ratios) < 0.8 and max(ratios) > 1.2   # width and height drawn apart: wider and taller people
    assert boxes[3] == crop_box(torch.Generator().manual_seed(3), 96, 128, 1.5)
    with pytest.raises(MarionetteError, match="below 1"):
        crop_box(torch.Generator(), 96, 128, 0.9)


def test_a_stripe_moves_and_widens_as_the_crop_says():
    image = torch.zeros(2, 40, 60, 3, dtype=torch.uint8)
    image[:, :, 30:36] = 255                          # columns 30..35
    assert torch.equal(crop_and_resize(image, (0, 0, 60, 40)), image)
    out = crop_and_resize(image, (20, 0, 30, 40))     # columns 20..49 twice as wide
    lit = (out[0, 20, :, 0] > 127).nonzero().flatten().tolist()
    assert lit == list(range(20, 32))                 # (30 - 20) * 2 .. (36 - 20) * 2 - 1
    assert out.dtype == torch.uint8 and out.shape == image.shape and torch.equal(out[0], out[1])
