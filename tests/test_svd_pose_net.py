"""PoseNet (StableAnimator = MimicMotion): exact checkpoint layout, official math, input transform."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from marionette.models.errors import MarionetteError
from marionette.models.mimicmotion.pose_net import PoseNet, pose_images_to_input

KEYS = Path(__file__).parent / "data" / "keys"  # copies of shared/reference/keys/*.json


def reference_keys(name: str) -> dict[str, list[int]]:
    return json.loads((KEYS / f"{name}.json").read_text())["keys"]


def random_pose_net(out_channels: int = 320, seed: int = 0) -> PoseNet:
    """Every tensor random (the official init zeroes final_proj and the biases, which would hide part of
    the math), at He scale so activations stay near 1."""
    net = PoseNet(out_channels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            fan_in = tensor[0].numel() if tensor.ndim == 4 else 1
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(2 / fan_in) * 0.5)
        net.scale.fill_(1.1279)  # the trained value in kijai's MimicMotion PoseNet file
    return net


def official_pose_net(weights: dict[str, torch.Tensor], poses: torch.Tensor) -> torch.Tensor:
    """Re-derivation from the official description: convs at Sequential indices 0, 2, ..., 14, padding 1,
    the 4x4 kernels are the stride-2 ones, each followed by SiLU = x * sigmoid(x); a 1x1 projection;
    the whole output times `scale`."""
    hidden = poses.reshape(-1, *poses.shape[-3:])
    for index in range(0, 16, 2):
        kernel = weights[f"conv_layers.{index}.weight"]
        stride = 2 if kernel.shape[-1] == 4 else 1
        hidden = F.conv2d(hidden, kernel, weights[f"conv_layers.{index}.bias"], stride=stride, padding=1)
        hidden = hidden * torch.sigmoid(hidden)
    projection = weights["final_proj.weight"][:, :, 0, 0]
    out = torch.einsum("oc,nchw->nohw", projection, hidden) + weights["final_proj.bias"][None, :, None, None]
    return out * weights["scale"]


def test_full_size_layout_equals_the_released_stableanimator_file():
    with torch.device("meta"):
        net = PoseNet()
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert ours == list(reference_keys("stableanimator_pose_net").items())  # names, shapes and order
    assert sum(v.numel() for v in net.state_dict().values()) == 205_557


def test_full_size_layout_equals_the_mimicmotion_pose_net_part():
    with torch.device("meta"):
        net = PoseNet()
    prefixed = {k[len("pose_net."):]: v for k, v in reference_keys("mimicmotion_1-1").items()
                if k.startswith("pose_net.")}
    assert len(prefixed) == 19
    assert list(prefixed.items()) == [(k, list(v.shape)) for k, v in net.state_dict().items()]


@pytest.mark.parametrize("out_channels", [320, 16])
def test_matches_the_official_math_on_random_weights(out_channels):
    net = random_pose_net(out_channels, seed=out_channels)
    poses = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = net(poses)
        expected = official_pose_net(net.state_dict(), poses)
    assert ours.shape == (3, out_channels, 5, 7)
    assert expected.abs().max() > 0.1  # a real signal, not zeros
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_video_batches_are_flattened_to_frames():
    net = random_pose_net(16)
    poses = torch.rand(2, 3, 3, 16, 24) * 2 - 1  # [B, F, 3, H, W]
    with torch.no_grad():
        together = net(poses)
        one_by_one = torch.cat([net(poses[b]) for b in range(2)])
    assert together.shape == (6, 16, 2, 3)
    torch.testing.assert_close(together, one_by_one)


@pytest.mark.parametrize("height,width", [(576, 1024), (1024, 576)])
def test_output_is_on_the_latent_grid(height, width):
    net = random_pose_net()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, height, width))
    assert out.shape == (1, 320, height // 8, width // 8)
    assert torch.isfinite(out).all()


def test_fresh_network_has_the_official_initialisation():
    torch.manual_seed(0)
    net = PoseNet()
    assert net.scale.item() == 2.0
    with torch.no_grad():
        assert torch.count_nonzero(net(torch.rand(1, 3, 32, 32))) == 0  # zero final_proj: no effect yet
    conv = net.conv_layers[12]  # 64 -> 64, 3x3: 36,864 He-normal weights
    assert abs(conv.weight.std().item() / math.sqrt(2 / (3 * 3 * 64)) - 1) < 0.03
    assert torch.count_nonzero(conv.bias) == 0
    assert [type(layer).__name__ for layer in net.conv_layers[1::2]] == ["SiLU"] * 8


def test_from_state_dict_is_strict_and_keeps_the_dtype():
    source = random_pose_net()
    weights = {k: v.half() for k, v in source.state_dict().items()}
    net = PoseNet.from_state_dict(weights)
    assert all(p.dtype == torch.float16 for p in net.parameters())
    assert torch.equal(net.final_proj.weight, weights["final_proj.weight"])
    tiny = PoseNet.from_state_dict(random_pose_net(16).state_dict())
    assert tiny.final_proj.out_channels == 16

    missing = dict(weights)
    del missing["conv_layers.6.bias"]
    with pytest.raises(MarionetteError, match="conv_layers.6.bias"):
        PoseNet.from_state_dict(missing)
    wrong = dict(weights, **{"conv_layers.0.weight": torch.zeros(3, 3, 5, 5)})
    with pytest.raises(MarionetteError, match="size mismatch"):
        PoseNet.from_state_dict(wrong)
    with pytest.raises(MarionetteError, match="pose_net"):
        PoseNet.from_state_dict({"pose_net." + k: v for k, v in weights.items()})


def test_wrong_input_layout_is_refused():
    with pytest.raises(MarionetteError, match=r"\[frames, 3, H, W\]"):
        random_pose_net(16)(torch.zeros(1, 32, 32, 3))


def test_pose_images_to_input_is_the_official_transform():
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 16, 24, 3), dtype=np.uint8)
    official = torch.from_numpy(pixels).float() / 127.5 - 1  # both pipelines: uint8 / 127.5 - 1
    ours = pose_images_to_input(torch.from_numpy(pixels).float() / 255)
    assert ours.shape == (2, 3, 16, 24) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, official.permute(0, 3, 1, 2), rtol=0, atol=1e-6)
    assert ours[1, 2, 5, 7] == pytest.approx(pixels[1, 5, 7, 2] / 127.5 - 1, abs=1e-6)
    half = pose_images_to_input(np.full((1, 8, 8, 3), 0.5, dtype=np.float32), dtype=torch.float16)
    assert half.dtype == torch.float16 and torch.count_nonzero(half) == 0


@pytest.mark.parametrize("images,message", [
    (torch.zeros(1, 3, 16, 16), r"\[frames, H, W, 3\]"),  # channels first
    (torch.zeros(1, 20, 16, 3), "multiples of 8"),
    (torch.zeros(1, 16, 16, 3, dtype=torch.uint8), "float"),
    (torch.full((1, 16, 16, 3), -1.0), r"\[0, 1\]"),  # already normalised
])
def test_pose_images_to_input_refuses_bad_images(images, message):
    with pytest.raises(MarionetteError, match=message):
        pose_images_to_input(images)
