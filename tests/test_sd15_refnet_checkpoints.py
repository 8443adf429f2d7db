"""Key-exact loading of the SD1.5 ReferenceNet backbone files (denoising_unet.pth, reference_unet.pth,
motion_module.pth): files recognised by their tensor names, never their file names; swapped, merged,
incomplete, truncated and code-carrying files refused with every mismatch named and the fix."""
import collections
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from marionette.models.errors import MarionetteError
from marionette.models.sd15.refnet_checkpoints import check_layout, layout_of, load_backbone
from marionette.models.sd15.refnet_tiny import tiny_backbone, tiny_motion_config, tiny_unet_config
from marionette.models.sd15.refnet_unet import build_denoising_unet, split_denoising_state

KEYS = Path(__file__).parent / "data" / "keys"


class Payload:
    """Any Python object: unpickling it would run the class's code path, so the weights-only loader refuses it."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refnet")
    backbone = tiny_backbone(seed=9)
    spatial, motion = split_denoising_state(backbone.denoising_unet.state_dict())
    torch.save(spatial, folder / "denoising_unet.pth")
    torch.save(collections.OrderedDict(motion), folder / "motion_module.pth")
    save_file({k: v.contiguous() for k, v in backbone.reference_unet.state_dict().items()},
              str(folder / "reference_unet.safetensors"))
    return folder, backbone, spatial, motion


def load(denoising, reference, motion, dtype=torch.float32):
    return load_backbone(denoising, reference, motion, dtype, tiny_unet_config(), tiny_motion_config())


def test_backbone_loads_exactly_and_predicts_the_same(files):
    folder, backbone, _, _ = files
    loaded = load(folder / "denoising_unet.pth", folder / "reference_unet.safetensors", folder / "motion_module.pth")
    latents, clip = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 1, 16)
    with torch.no_grad():
        assert torch.equal(loaded.denoising_unet(latents, 5, clip), backbone.denoising_unet(latents, 5, clip))
    assert set(loaded.files) == {"denoising_unet", "reference_unet", "motion_module"}
    half = load(folder / "denoising_unet.pth", folder / "reference_unet.safetensors", folder / "motion_module.pth",
                torch.bfloat16)
    assert {p.dtype for p in half.denoising_unet.parameters()} == {torch.bfloat16}


def test_swapped_files_name_what_they_are(files):
    folder = files[0]
    with pytest.raises(MarionetteError, match=r"reference_unet.safetensors is the reference UNet .*not the denoising "
                                              r"UNet.*belongs where reference_unet.pth"):
        load(folder / "reference_unet.safetensors", folder / "reference_unet.safetensors", folder / "motion_module.pth")
    with pytest.raises(MarionetteError, match="denoising_unet.pth is the denoising UNet .*not the motion modules"):
        load(folder / "denoising_unet.pth", folder / "reference_unet.safetensors", folder / "denoising_unet.pth")


def test_merged_incomplete_and_extended_files_are_named(files, tmp_path):
    folder, _, spatial, motion = files
    merged = tmp_path / "denoising_unet.pth"
    torch.save({**spatial, **motion}, merged)
    with pytest.raises(MarionetteError, match="motion modules merged in"):
        load(merged, folder / "reference_unet.safetensors", folder / "motion_module.pth")
    without_mid = {k: v for k, v in motion.items() if not k.startswith("mid_block.")}
    incomplete = tmp_path / "motion_module.pth"
    torch.save(without_mid, incomplete)
    with pytest.raises(MarionetteError, match=r"28 missing: mid_block.motion_modules.0.temporal_transformer.norm"):
        load(folder / "denoising_unet.pth", folder / "reference_unet.safetensors", incomplete)
    extended = tmp_path / "denoising_unet_extra.pth"
    torch.save({**spatial, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.x": torch.zeros(2)},
               extended)
    with pytest.raises(MarionetteError, match=r"1 unexpected: down_blocks.0.attentions.0.transformer_blocks.0.attn1"):
        load(extended, folder / "reference_unet.safetensors", folder / "motion_module.pth")


def test_truncated_and_code_carrying_files_are_refused(files, tmp_path):
    folder = files[0]
    truncated = tmp_path / "motion_module.pth"
    truncated.write_bytes((folder / "motion_module.pth").read_bytes()[:100_000])
    with pytest.raises(MarionetteError, match="truncated"):
        load(folder / "denoising_unet.pth", folder / "reference_unet.safetensors", truncated)
    carrying = tmp_path / "reference_unet.pth"
    torch.save({"conv_in.weight": torch.zeros(1), "note": Payload()}, carrying)
    with pytest.raises(MarionetteError, match="Python objects besides tensors"):
        load(folder / "denoising_unet.pth", carrying, folder / "motion_module.pth")


def test_full_size_motion_modules_without_the_mid_block_are_named():
    """A v2 motion module saved without its mid-block module (as a peer's config builds it) is refused
    naming the 28 missing tensors; the released layout itself passes."""
    with torch.device("meta"):
        layout = split_denoising_state(layout_of(build_denoising_unet()))[1]
    released = {k: tuple(v) for k, v in json.loads((KEYS / "champ_motion_module.json").read_text())["keys"].items()}
    check_layout(released, layout, "the motion modules", "motion_module.pth", "fix")
    without_mid = {k: v for k, v in released.items() if not k.startswith("mid_block.")}
    with pytest.raises(MarionetteError, match=r"has 560\); 28 missing: mid_block\.motion_modules\.0\..* and 16 more "
                                              r"\(mid_block \(16\)\)") as caught:
        check_layout(without_mid, layout, "the motion modules", "motion_module.pth", "fix")
    assert caught.value.missing == [k for k in released if k.startswith("mid_block.")]
    assert caught.value.unexpected == [] and caught.value.misshaped == []
