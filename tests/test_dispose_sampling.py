"""DisPose inside the SVD sampler: the per-frame control inputs are cut to each window and given to both CFG
passes, the ControlNet's residuals steer the UNet (strength 0 = plain MimicMotion), and errors."""
import pytest
import torch
from torch import nn

from marionette.models.dispose.controlled_unet import DisPoseUNet
from marionette.models.dispose.controlnet import DisPoseControlNet, tiny_dispose_controlnet_config
from marionette.models.errors import MarionetteError
from marionette.models.svd.configs import tiny_unet_config
from marionette.models.svd.sampler import SamplerSettings, effective_tile, sample
from marionette.models.svd.schedule import tile_windows
from marionette.models.svd.unet import build_unet

FRAMES, SIZE = 6, 64
SETTINGS = SamplerSettings.preset("mimicmotion", steps=2, tile_size=4, tile_overlap=1)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    unet = build_unet(tiny_unet_config()).eval()
    config = tiny_dispose_controlnet_config()
    controlnet = DisPoseControlNet(**config).eval()
    with torch.no_grad():  # the released zero convolutions are trained; random ones make the test sensitive
        for name, parameter in controlnet.named_parameters():
            if "controlnet_" in name or "zero" in name:
                parameter.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(1)
    dim = tiny_unet_config()["cross_attention_dim"]
    inputs = dict(
        cond=torch.randn(1, 1, dim, generator=gen),
        ref=torch.randn(4, SIZE // 8, SIZE // 8, generator=gen),
        pose=torch.randn(FRAMES, tiny_unet_config()["block_out_channels"][0], SIZE // 8, SIZE // 8, generator=gen),
        frame_inputs=dict(dense_flow=torch.randn(FRAMES, 2, SIZE, SIZE, generator=gen) * 5,
                          sparse_flow=torch.randn(FRAMES, 2, SIZE, SIZE, generator=gen),
                          points=torch.rand(FRAMES, 18, 2, generator=gen),
                          visible=torch.rand(FRAMES, 18, generator=gen) > 0.2))
    embeddings = torch.randn(1, 18, config["point_embedding_channels"], generator=gen)
    return unet, controlnet, embeddings, inputs


def run(unet_fn, inputs, frame_inputs=True):
    return sample(unet_fn, inputs["cond"], torch.zeros_like(inputs["cond"]), inputs["ref"], inputs["pose"], SETTINGS,
                  frame_inputs=inputs["frame_inputs"] if frame_inputs else None)


def test_strength_zero_is_plain_mimicmotion_and_control_steers(parts):
    unet, controlnet, embeddings, inputs = parts
    plain = run(unet, inputs, frame_inputs=False)
    off = run(DisPoseUNet(unet, controlnet, (SIZE, SIZE), embeddings, strength=0.0), inputs)
    on = run(DisPoseUNet(unet, controlnet, (SIZE, SIZE), embeddings, strength=1.0), inputs)
    assert torch.allclose(off, plain, atol=1e-6)
    assert (on - plain).abs().max() > 1e-3
    no_points = run(DisPoseUNet(unet, controlnet, (SIZE, SIZE), None, strength=1.0), inputs)
    assert (no_points - on).abs().max() > 1e-5  # the keypoint correspondence matters on its own
    assert torch.allclose(run(unet, inputs, frame_inputs=False), plain)  # hooks are gone afterwards


def test_each_window_and_both_cfg_passes_get_their_frames(parts):
    unet, controlnet, embeddings, inputs = parts
    seen = []

    class Spy:
        def __init__(self):
            self.inner = DisPoseUNet(unet, controlnet, (SIZE, SIZE), embeddings)

        def __call__(self, sample_in, timestep, **kw):
            seen.append({k: kw[k].clone() for k in ("dense_flow", "sparse_flow", "points", "visible")})
            return self.inner(sample_in, timestep, **kw)

    run(Spy(), inputs)
    windows = tile_windows(FRAMES, *effective_tile(FRAMES, SETTINGS))
    assert len(windows) > 1 and len(seen) == SETTINGS.steps * len(windows) * 2  # cond + uncond each
    for call, frames in zip(seen, [w for w in windows for _ in range(2)] * SETTINGS.steps):
        assert frames[0] == 0
        for name, value in call.items():
            assert torch.equal(value, inputs["frame_inputs"][name][list(frames)]), name


def test_frame_inputs_of_the_wrong_length_are_refused(parts):
    unet, controlnet, embeddings, inputs = parts
    bad = dict(inputs, frame_inputs=dict(inputs["frame_inputs"], dense_flow=torch.zeros(FRAMES - 1, 2, SIZE, SIZE)))
    with pytest.raises(MarionetteError, match="'dense_flow' has 5 frames for 6"):
        run(DisPoseUNet(unet, controlnet, (SIZE, SIZE), embeddings), bad)
    with pytest.raises(MarionetteError, match="strength"):
        DisPoseUNet(unet, controlnet, (SIZE, SIZE), embeddings, strength=-1.0)
