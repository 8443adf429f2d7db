"""ShapeAlign math on hand-made body sequences."""
import numpy as np
import pytest

from marionette.models.body.shape_align import align_shape
from marionette.models.body.types import BodySequence, Camera
from marionette.models.errors import MarionetteError


def seq(frames=3, betas=0.0, t=None, cam=Camera(1000.0, 512, 512), model="anny", expression=()):
    t = np.array([[0.1 * i, 0.0, 4.0 + 0.5 * i] for i in range(frames)]) if t is None else np.asarray(t)
    return BodySequence(model, "neutral", np.full(6, betas), np.asarray(expression, np.float32),
                        np.arange(frames * 9, dtype=np.float32).reshape(frames, 9), t, cam)


def test_reference_position_moves_from_the_reference_spot_scaled_by_depth():
    drv, ref = seq(), seq(1, betas=0.7, t=[[0.5, 0.2, 2.0]], cam=Camera(800.0, 512, 768))
    out = align_shape(drv, ref)
    # depth ratio 2 / 4 = 0.5 scales the driving motion (0.1, 0, 0.5) per frame
    np.testing.assert_allclose(out.translation, [[0.5, 0.2, 2.0], [0.55, 0.2, 2.25], [0.6, 0.2, 2.5]], atol=1e-6)
    np.testing.assert_array_equal(out.pose, drv.pose)           # the motion is kept
    np.testing.assert_array_equal(out.betas, ref.betas)         # the reference body
    assert out.camera == ref.camera and out.num_frames == 3


def test_view_transfer_pins_every_frame_to_the_reference_translation():
    out = align_shape(seq(), seq(1, t=[[0.5, 0.2, 2.0]]), "view transfer")
    np.testing.assert_array_equal(out.translation, np.tile([0.5, 0.2, 2.0], (3, 1)).astype(np.float32))


def test_driving_framing_keeps_the_field_of_view_at_the_reference_size():
    drv = seq(cam=Camera(1000.0, 512, 512))
    out = align_shape(drv, seq(1, cam=Camera(800.0, 576, 1024)), "driving framing")
    assert out.camera == Camera(2000.0, 576, 1024)
    np.testing.assert_array_equal(out.translation, drv.translation)


def test_expression_follows_the_reference_when_asked():
    drv = seq(model="smplx", expression=np.zeros(10))
    ref = seq(1, model="smplx", expression=np.ones(10))
    assert align_shape(drv, ref).expression.tolist() == [1.0] * 10
    assert align_shape(drv, ref, transfer_expression=False).expression.tolist() == [0.0] * 10


@pytest.mark.parametrize("bad, match", [
    (dict(reference=seq(2)), "2 frames"),
    (dict(reference=seq(1, model="smplx")), "smplx"),
    (dict(placement="sideways"), "Unknown placement"),
])
def test_bad_inputs_are_named(bad, match):
    args = dict(driving=seq(), reference=seq(1), placement="reference position") | bad
    with pytest.raises(MarionetteError, match=match):
        align_shape(**args)
