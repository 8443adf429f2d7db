"""Champ's guidance encoders: parity with a plain-torch re-derivation of the official forward (conv stack,
only attentions[-1], zero-init conv_out) and of the summed fusion; key-exact loading of
guidance_encoder_<type>.pth (the absent guidance_attention.* accepted, anything else refused by name);
Moore files, derivative and truncated files refused with the fix."""
import pytest
import torch
from safetensors.torch import save_file

import sd15_refnet_plain as plain
from marionette.models.animate_anyone.tiny import tiny_pose_guider
from marionette.models.champ.guidance_encoder import GUIDANCE_TYPES
from marionette.models.champ.loading import (load_champ, load_champ_guidance, load_guidance_encoder,
                                             unused_attention_layout)
from marionette.models.champ.tiny import TINY_CHANNELS, TINY_GROUPS, TINY_HEADS, tiny_champ, tiny_guidance_encoder
from marionette.models.core.modules import finish
from marionette.models.core.seeding import seeded
from marionette.models.errors import MarionetteError
from marionette.models.sd15.guidance_convs import maps_to_input
from marionette.models.sd15.refnet_checkpoints import family_of, load_backbone
from marionette.models.sd15.refnet_tiny import TINY_UNET, tiny_motion_config, tiny_unet_config
from marionette.models.sd15.refnet_unet import split_denoising_state

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
SIZES = dict(channels=TINY_CHANNELS, embedding_channels=TINY_UNET["block_out_channels"][0], heads=TINY_HEADS,
             groups=TINY_GROUPS)


def error(ours, theirs):
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_guidance_encoders_and_their_sum_match_the_plain_derivation(dtype):
    model = tiny_champ(seed=2, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    maps = {name: torch.rand(3, 3, 64, 48, generator=g, dtype=dtype) for name in GUIDANCE_TYPES}
    with torch.no_grad():
        ours = model.guidance(maps)
        single = model.guidance.encoders["depth"](maps["depth"])
    per_type = [plain.guidance_encoder(model.guidance.encoders[name].state_dict(), maps[name], TINY_HEADS,
                                       TINY_GROUPS[1]) for name in GUIDANCE_TYPES]
    assert ours.shape == (3, TINY_UNET["block_out_channels"][0], 8, 6)
    assert error(single, per_type[0]) <= TOLERANCE[dtype]
    assert error(ours, torch.stack(per_type).sum(0)) <= TOLERANCE[dtype]


def test_only_the_last_attention_runs():
    with seeded(4):
        encoder = finish(tiny_guidance_encoder())
    maps = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = encoder(maps)
        for attention in encoder.attentions[:-1]:
            for parameter in attention.parameters():
                parameter.add_(1.0)
        unchanged = encoder(maps)
        for parameter in encoder.attentions[-1].parameters():
            parameter.add_(0.1)
        changed = encoder(maps)
    assert torch.equal(before, unchanged) and not torch.allclose(before, changed)


def test_maps_input_and_mismatched_maps_are_refused_with_the_fix():
    model = tiny_champ(seed=0, types=("depth", "dwpose"))
    images = torch.rand(4, 32, 32, 3)
    x = maps_to_input(images)
    assert x.shape == (4, 3, 32, 32) and torch.equal(x[1, 2], images[1, :, :, 2])  # RGB 0..1, not normalised
    with pytest.raises(MarionetteError, match="no map for dwpose"):
        model.guidance({"depth": x})
    with pytest.raises(MarionetteError, match="no encoder for normal"):
        model.guidance({"depth": x, "dwpose": x, "normal": x})
    with pytest.raises(MarionetteError, match="differ in shape"):
        model.guidance({"depth": x, "dwpose": x[:3]})
    with pytest.raises(MarionetteError, match="multiples of 8"):
        model.guidance({"depth": x[..., :30], "dwpose": x[..., :30]})
    with pytest.raises(MarionetteError, match=r"\[0, 1\]"):
        maps_to_input(images * 2 - 1)


# ----------------------------------------------------------------------------------------------- loading
def save(tmp_path, name, state, kind="pth"):
    path = tmp_path / name
    if kind == "pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_released_layout_loads_and_the_unused_attention_is_tolerated(tmp_path):
    encoder = finish(tiny_guidance_encoder())
    state = encoder.state_dict()
    maps = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = encoder(maps)
    for kind, extra in (("pth", {}), ("safetensors", {}),
                        ("pth", {k: torch.randn(v) for k, v in unused_attention_layout(**{
                            k: SIZES[k] for k in ("channels", "heads", "groups")}).items()})):
        path = save(tmp_path, f"guidance_encoder_depth.{kind}", {**state, **extra}, kind)
        loaded = load_guidance_encoder(path, torch.float32, **SIZES)
        with torch.no_grad():
            assert torch.equal(loaded(maps), expected)
    assert family_of(path) == "champ"


def test_a_few_tiny_tensors_outside_the_encoder_are_ignored_and_logged(tmp_path, caplog):
    """The released files' sizes point at ~12 tiny tensors the released class cannot name; the official
    strict=False load ignores them, and so do we (outside the encoder's own submodules, logged)."""
    encoder = finish(tiny_guidance_encoder())
    extras = {f"unknown_{i}.weight": torch.randn(16) for i in range(12)}
    path = save(tmp_path, "guidance_encoder_depth.pth", {**encoder.state_dict(), **extras})
    maps = torch.rand(1, 3, 32, 32)
    with caplog.at_level("WARNING", logger="marionette"):
        loaded = load_guidance_encoder(path, torch.float32, **SIZES)
    with torch.no_grad():
        assert torch.equal(loaded(maps), encoder(maps))
    assert "ignoring 12 small tensors" in caplog.text and "unknown_0.weight" in caplog.text
    too_big = save(tmp_path, "guidance_encoder_normal.pth", {**encoder.state_dict(), "unknown.weight": torch.zeros(4096)})
    with pytest.raises(MarionetteError, match="another project's pose guider.*unknown"):
        load_guidance_encoder(too_big, torch.float32, **SIZES)
    too_many = save(tmp_path, "guidance_encoder_dwpose.pth",
                    {**encoder.state_dict(), **{f"u{i}.w": torch.zeros(2) for i in range(17)}})
    with pytest.raises(MarionetteError, match="another project's pose guider.*u0"):
        load_guidance_encoder(too_many, torch.float32, **SIZES)


def test_anything_but_the_missing_guidance_attention_is_refused_by_name(tmp_path):
    state = tiny_guidance_encoder().state_dict()
    partial = dict(list(unused_attention_layout(TINY_CHANNELS, TINY_HEADS, TINY_GROUPS).items())[:3])
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "attentions.5.proj_out.bias"},
                    "1 missing: attentions.5.proj_out.bias"),
        "unexpected": ({**state, "attentions.9.norm.weight": torch.zeros(4)}, "1 unexpected: attentions.9.norm.weight"),
        "partial_unused": ({**state, **{k: torch.zeros(v) for k, v in partial.items()}},
                           "3 unexpected: guidance_attention.norm.weight"),
        "shape": ({**state, "conv_out.weight": torch.zeros(32, 16, 1, 1)}, r"conv_out.weight \[32, 16, 1, 1\]"),
    }
    for name, (broken, message) in cases.items():
        path = save(tmp_path, f"guidance_encoder_{name}.pth", broken)
        with pytest.raises(MarionetteError, match=message) as caught:
            load_guidance_encoder(path, torch.float32, **SIZES)
        assert "guidance_encoder_<type>.pth" in str(caught.value), name


def test_a_moore_pose_guider_given_as_champ_names_the_fix(tmp_path):
    path = save(tmp_path, "guidance_encoder_depth.pth", tiny_pose_guider().state_dict())
    with pytest.raises(MarionetteError, match="Moore-AnimateAnyone's PoseGuider.*not a Champ") as caught:
        load_guidance_encoder(path, torch.float32, **SIZES)
    assert "pose_guider.pth" in str(caught.value) and "Animate Anyone" in str(caught.value)
    assert family_of(path) == "animate_anyone"  # by keys, never by file name


def test_truncated_and_foreign_files_are_refused(tmp_path):
    good = save(tmp_path, "guidance_encoder_normal.pth", tiny_guidance_encoder().state_dict())
    data = good.read_bytes()
    truncated = tmp_path / "guidance_encoder_semantic_map.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(MarionetteError, match="truncated"):
        load_guidance_encoder(truncated, torch.float32, **SIZES)
    vae_like = save(tmp_path, "guidance_encoder_dwpose.pth", {"encoder.down_blocks.0.conv.weight": torch.zeros(1)})
    with pytest.raises(MarionetteError, match="It is a VAE"):
        load_guidance_encoder(vae_like, torch.float32, **SIZES)


def test_whole_champ_model_loads_from_files(tmp_path):
    model = tiny_champ(seed=6, types=("depth", "normal"))
    spatial, motion = split_denoising_state(model.backbone.denoising_unet.state_dict())
    paths = {"denoising": save(tmp_path, "denoising_unet.pth", spatial),
             "motion": save(tmp_path, "motion_module.safetensors", motion, "safetensors"),
             "reference": save(tmp_path, "reference_unet.pth", model.backbone.reference_unet.state_dict())}
    guidance = {name: save(tmp_path, f"guidance_encoder_{name}.pth", model.guidance.encoders[name].state_dict())
                for name in ("depth", "normal")}
    # load_champ reads the released sizes; the tiny layout goes through the same readers piece by piece
    loaded_guidance = load_champ_guidance(guidance, torch.float32, **SIZES)
    backbone = load_backbone(paths["denoising"], paths["reference"], paths["motion"], torch.float32,
                             tiny_unet_config(), tiny_motion_config())
    for ours, theirs in ((backbone.denoising_unet, model.backbone.denoising_unet),
                         (backbone.reference_unet, model.backbone.reference_unet),
                         (loaded_guidance, model.guidance)):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    with pytest.raises(MarionetteError, match="another shape"):  # the tiny files are not the released sizes
        load_champ(paths["denoising"], paths["reference"], paths["motion"], guidance, torch.float32)
