"""The SD1.5 ReferenceNet family's modules built at full size on the meta device have exactly the tensor
names, shapes and order of the released files (tests/data/keys/*.json, made from the official classes:
see ../shared/reference/keys/README.md)."""
import json
from pathlib import Path

import pytest
import torch

from marionette.models.animate_anyone.pose_guider import PoseGuider
from marionette.models.champ.guidance_encoder import GuidanceEncoder
from marionette.models.champ.loading import unused_attention_layout
from marionette.models.sd15.refnet_checkpoints import classify_keys, layout_of
from marionette.models.sd15.refnet_unet import build_denoising_unet, build_reference_unet, split_denoising_state

KEYS = Path(__file__).parent / "data" / "keys"


def released(name: str) -> dict:
    return json.loads((KEYS / f"{name}.json").read_text(encoding="utf-8"))


def layout(entry: dict) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v)) for k, v in entry["keys"].items()]


def ordered(module_layout: dict) -> list[tuple[str, tuple[int, ...]]]:
    return list(module_layout.items())


@pytest.fixture(scope="module")
def meta_modules():
    with torch.device("meta"):
        return {"denoising": build_denoising_unet(), "reference": build_reference_unet(),
                "guidance": GuidanceEncoder(), "pose_guider": PoseGuider()}


@pytest.mark.parametrize("family", ["champ", "moore"])
def test_denoising_unet3d_is_denoising_unet_pth_plus_motion_module_pth(meta_modules, family):
    spatial, motion = split_denoising_state(layout_of(meta_modules["denoising"]))
    assert ordered(spatial) == layout(released(f"{family}_denoising_unet"))
    assert ordered(motion) == layout(released(f"{family}_motion_module"))
    assert len(spatial) == 686 and len(motion) == 588
    assert sum(k.endswith(".pos_encoder.pe") for k in motion) == 42
    assert all(shape[:2] == (1, 32) for k, shape in motion.items() if k.endswith(".pe"))


@pytest.mark.parametrize("family", ["champ", "moore"])
def test_reference_unet_is_reference_unet_pth(meta_modules, family):
    assert ordered(layout_of(meta_modules["reference"])) == layout(released(f"{family}_reference_unet"))


def test_guidance_encoder_is_the_released_130_tensors_and_lacks_exactly_guidance_attention(meta_modules):
    entry = released("champ_guidance_encoder")
    assert ordered(layout_of(meta_modules["guidance"])) == layout(entry)
    not_in_file = {k: tuple(v) for k, v in entry["module_keys_not_in_file"].items()}
    assert ordered(unused_attention_layout()) == list(not_in_file.items())


def test_pose_guider_is_moore_pose_guider_pth_not_the_class_default(meta_modules):
    assert ordered(layout_of(meta_modules["pose_guider"])) == layout(released("moore_pose_guider"))
    with torch.device("meta"):
        default = PoseGuider((16, 32, 64, 128))
    assert list(layout_of(default)) == list(released("moore_pose_guider")["keys"])  # same names ...
    assert layout_of(default) != dict(layout(released("moore_pose_guider")))  # ... other shapes


def test_sixteen_reference_blocks_pair_by_name_and_21_motion_modules(meta_modules):
    denoiser, reference = meta_modules["denoising"], meta_modules["reference"]
    names = {id(m): n for n, m in denoiser.named_modules()}
    ref_names = {id(m): n for n, m in reference.named_modules()}
    pairs = [(names[id(a)], ref_names[id(b)])
             for a, b in zip(denoiser.transformer_blocks(), reference.transformer_blocks())]
    assert len(pairs) == 16 and all(a == b for a, b in pairs)
    assert len(denoiser.motion_modules()) == 21 and denoiser.max_frames == 32


@pytest.mark.parametrize("name,kind", [("champ_denoising_unet", "denoising_unet"),
                                       ("moore_reference_unet", "reference_unet"),
                                       ("champ_motion_module", "motion_module"),
                                       ("moore_pose_guider", "pose_guider"),
                                       ("champ_guidance_encoder", "guidance_encoder")])
def test_released_key_sets_are_recognised_by_their_names(name, kind):
    assert classify_keys(released(name)["keys"]) == kind
