"""Moore-AnimateAnyone's pose guider: parity with a plain-torch re-derivation of the official forward, and
key-exact loading of pose_guider.pth; Champ files, derivative projects' pose_guider.pth files (the class
default channels, a UNet saved under that name) and truncated files are refused with the fix."""
import pytest
import torch

import sd15_refnet_plain as plain
from marionette.models.animate_anyone.loading import load_pose_guider
from marionette.models.animate_anyone.pose_guider import PoseGuider
from marionette.models.animate_anyone.tiny import TINY_CHANNELS, tiny_animate_anyone, tiny_pose_guider
from marionette.models.champ.tiny import tiny_guidance_encoder
from marionette.models.core.modules import finish
from marionette.models.core.seeding import seeded
from marionette.models.errors import MarionetteError
from marionette.models.sd15.refnet_checkpoints import family_of
from marionette.models.sd15.refnet_tiny import TINY_UNET

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
SIZES = dict(channels=TINY_CHANNELS, embedding_channels=TINY_UNET["block_out_channels"][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_pose_guider_matches_the_plain_derivation(dtype):
    guider = tiny_animate_anyone(seed=1, dtype=dtype).pose_guider
    poses = torch.rand(5, 3, 48, 64, dtype=dtype, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = guider(poses)
    theirs = plain.guidance_encoder(guider.state_dict(), poses)
    assert ours.shape == (5, TINY_UNET["block_out_channels"][0], 6, 8)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= TOLERANCE[dtype]


def test_full_size_pose_guider_is_320_channels_at_one_eighth():
    with seeded(0):
        guider = finish(PoseGuider())
    with torch.no_grad():
        out = guider(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 320, 8, 8) and sum(p.numel() for p in guider.parameters()) == 1_086_480


def save(tmp_path, name, state):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_pose_guider_loads_key_exact(tmp_path):
    guider = finish(tiny_pose_guider())
    path = save(tmp_path, "pose_guider.pth", guider.state_dict())
    loaded = load_pose_guider(path, torch.float32, **SIZES)
    poses = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(poses), guider(poses))
    assert family_of(path) == "animate_anyone"
    half = load_pose_guider(path, torch.float16, **SIZES)
    assert next(half.parameters()).dtype == torch.float16


def test_a_champ_encoder_given_as_pose_guider_names_the_fix(tmp_path):
    path = save(tmp_path, "pose_guider.pth", tiny_guidance_encoder().state_dict())
    with pytest.raises(MarionetteError, match="is a Champ guidance encoder.*not Moore-AnimateAnyone's") as caught:
        load_pose_guider(path, torch.float32, **SIZES)
    assert "guidance_encoder" in str(caught.value)


def test_derivative_pose_guider_files_are_refused(tmp_path):
    # the official class default (16, 32, 64, 128): the same 16 names, other shapes
    with torch.device("meta"):
        default = PoseGuider((16, 32, 64, 128))
    state = {k: torch.zeros(v.shape) for k, v in default.state_dict().items()}
    path = save(tmp_path, "pose_guider.pth", state)
    with pytest.raises(MarionetteError, match=r"7 with another shape: blocks.3.weight \[64, 32, 3, 3\] "
                                              r"\(expected \[96, 32, 3, 3\]\)") as caught:
        load_pose_guider(path, torch.float32)
    assert "patrolli/AnimateAnyone" in str(caught.value)
    # a UNet saved under the pose guider's name (MusePose's pose_guider.pth is a 3.4 GB file)
    unet_like = save(tmp_path, "pose_guider.pth", {"conv_in.weight": torch.zeros(1), "down_blocks.0.x": torch.zeros(1)})
    with pytest.raises(MarionetteError, match="pose_guider.pth is the reference UNet"):
        load_pose_guider(unet_like, torch.float32)
    # a pose guider with attention layers of its own (AniPortrait's adds cross_attn1-4)
    state = {**tiny_pose_guider().state_dict(), "cross_attn1.norm.weight": torch.zeros(8)}
    extended = save(tmp_path, "pose_guider.pth", state)
    with pytest.raises(MarionetteError, match="another project's pose guider: the PoseGuider convs plus cross_attn1"):
        load_pose_guider(extended, torch.float32, **SIZES)


def test_truncated_pose_guider_is_refused(tmp_path):
    path = save(tmp_path, "pose_guider.pth", tiny_pose_guider().state_dict())
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(MarionetteError, match="truncated.*Download the file again"):
        load_pose_guider(path, torch.float32, **SIZES)
