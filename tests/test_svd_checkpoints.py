"""Checkpoint files: safe loading, recognising the released layouts, exact tensor sets, clear errors."""
import functools
import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from marionette.models.errors import MarionetteError
from marionette.models.core.checkpoints import load_state_dict_file
from marionette.models.mimicmotion.pose_net import PoseNet
from marionette.models.pipelines.svd_checkpoints import (VARIANTS, detect_variant, expected_keys, load_checkpoint,
                                                         split_mimicmotion)

KEYS = Path(__file__).parent / "data" / "keys"  # copies of shared/reference/keys/*.json
SHARED_KEYS = Path("/work/shared/reference/keys")


@functools.lru_cache(maxsize=None)
def reference(name: str) -> dict[str, tuple[int, ...]]:
    path = KEYS / f"{name}.json" if (KEYS / f"{name}.json").exists() else SHARED_KEYS / f"{name}.json"
    return {k: tuple(v) for k, v in json.loads(path.read_text())["keys"].items()}


def part(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: v for k, v in reference(name).items() if k.startswith(prefix)}


def on_meta(layout: dict) -> dict[str, torch.Tensor]:
    """A full-size state dict that costs no memory."""
    return {k: torch.empty(shape, device="meta") for k, shape in layout.items()}


LAYOUTS = {  # variant -> its released key list
    "stableanimator_unet": lambda: reference("stableanimator_unet"),
    "stableanimator_pose_net": lambda: reference("stableanimator_pose_net"),
    "stableanimator_face_encoder": lambda: reference("stableanimator_face_encoder"),
    "mimicmotion": lambda: reference("mimicmotion_1-1"),
    "mimicmotion_unet": lambda: part("mimicmotion_1-1", "unet."),
    "mimicmotion_pose_net": lambda: part("mimicmotion_1-1", "pose_net."),
    "svd_unet": lambda: part("mimicmotion_1-1", "unet."),
}


@pytest.mark.parametrize("variant", list(LAYOUTS))
def test_generated_key_lists_equal_the_released_files(variant):
    ours, released = expected_keys(variant), LAYOUTS[variant]()
    assert set(ours) == set(released)
    assert len(ours) == VARIANTS[variant].count
    known = {k: shape for k, shape in ours.items() if shape is not None}
    assert {k: released[k] for k in known} == known
    if variant != "stableanimator_face_encoder":  # the face encoder list is names only
        assert len(known) == len(ours)


@pytest.mark.parametrize("variant,file_name", [
    ("stableanimator_unet", "unet.pth"),
    ("stableanimator_pose_net", "pose_net.pth"),
    ("stableanimator_face_encoder", "face_encoder.pth"),
    ("mimicmotion", "MimicMotion_1-1.pth"),
    ("mimicmotion", "MimicMotion-fp16.safetensors"),
    ("mimicmotion_unet", "MimicMotionMergedUnet_1-1-fp16.safetensors"),
    ("mimicmotion_pose_net", "mimic_motion_pose_net.safetensors"),
    ("svd_unet", "diffusion_pytorch_model.fp16.safetensors"),
])
def test_recognises_each_released_file(variant, file_name):
    assert detect_variant(on_meta(LAYOUTS[variant]()), file_name) == variant


def test_identical_structures_fall_back_to_stableanimator_and_svd_without_a_name():
    assert detect_variant(on_meta(part("mimicmotion_1-1", "pose_net."))) == "stableanimator_pose_net"
    assert detect_variant(on_meta(part("mimicmotion_1-1", "unet."))) == "svd_unet"
    named = detect_variant(on_meta(part("mimicmotion_1-1", "unet.")), "/models/x/MIMICMotion_unet.pth")
    assert named == "mimicmotion_unet"


def test_detection_looks_at_names_not_shapes():
    tiny = {k: torch.zeros(1) for k in reference("stableanimator_unet")}
    assert detect_variant(tiny, "unet.pth") == "stableanimator_unet"


def test_single_file_svd_is_recognised():
    keys = ["conditioner.embedders.0.open_clip.model.visual.proj",
            "first_stage_model.decoder.mid.block_1.time_stack.in_layers.2.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
            "model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight",
            "model.diffusion_model.input_blocks.1.0.time_mixer.mix_factor"]
    assert detect_variant({k: torch.zeros(1) for k in keys}, "svd_xt.safetensors") == "svd_xt_single_file"
    image_model = {k: torch.zeros(1) for k in keys if "time_" not in k}
    with pytest.raises(MarionetteError, match="without temporal layers"):
        detect_variant(image_model, "v1-5-pruned.safetensors")


def test_missing_tensors_are_counted_and_named():
    state = on_meta(reference("stableanimator_unet"))
    gone = ["mid_block.attentions.0.transformer_blocks.0.attn2.processor.id_to_v.weight",
            "conv_in.bias", "up_blocks.3.resnets.2.time_mixer.mix_factor"]
    for key in gone:
        del state[key]
    with pytest.raises(MarionetteError) as caught:
        detect_variant(state, "unet.pth")
    message = str(caught.value)
    assert "1457 instead of 1460" in message and "3 missing" in message
    assert "conv_in.bias" in message and "Animation/unet.pth" in message


def test_a_mimicmotion_file_without_its_pose_net_is_refused():
    state = on_meta(part("mimicmotion_1-1", "unet."))
    state = {"unet." + k: v for k, v in state.items()}
    with pytest.raises(MarionetteError, match="19 missing .*pose_net.scale"):
        detect_variant(state, "MimicMotion_1-1.pth")


def test_unexpected_tensors_are_refused():
    state = on_meta(reference("mimicmotion_1-1"))
    state["vae.encoder.conv_in.weight"] = torch.empty(1, device="meta")
    with pytest.raises(MarionetteError, match="1 unexpected .*vae.encoder.conv_in.weight"):
        detect_variant(state)
    pose = on_meta(reference("stableanimator_pose_net"))
    pose["conv_layers.16.weight"] = torch.empty(1, device="meta")
    with pytest.raises(MarionetteError, match="20 instead of 19"):
        detect_variant(pose, "pose_net.pth")


def test_a_foreign_file_says_what_it_looks_like_and_what_is_expected():
    foreign = {f"encoder.layer.{i}.attention.self.query.weight": torch.zeros(1) for i in range(4)}
    with pytest.raises(MarionetteError) as caught:
        detect_variant(foreign, "bert.bin")
    message = str(caught.value)
    assert "bert.bin is not a StableAnimator, MimicMotion or SVD checkpoint" in message
    assert "encoder. (4)" in message and "encoder.layer.0.attention.self.query.weight" in message
    assert "Animation/pose_net.pth" in message and "MimicMotion_1-1.pth" in message
    wrapped = {"module." + k: v for k, v in on_meta(reference("stableanimator_pose_net")).items()}
    with pytest.raises(MarionetteError, match="starts with 'module.'"):
        detect_variant(wrapped)


def test_split_mimicmotion_strips_the_prefixes_and_shares_the_tensors():
    pose_layout = part("mimicmotion_1-1", "pose_net.")
    state = on_meta(reference("mimicmotion_1-1"))
    state.update({"pose_net." + k: torch.randn(shape).half() for k, shape in pose_layout.items()})
    unet, pose_net = split_mimicmotion(state)
    assert list(unet) == list(part("mimicmotion_1-1", "unet.")) and list(pose_net) == list(pose_layout)
    assert unet["conv_in.weight"] is state["unet.conv_in.weight"]
    net = PoseNet.from_state_dict(pose_net)  # loads strictly, in fp16
    assert net.scale.dtype == torch.float16 and torch.equal(net.scale, state["pose_net.scale"])
    with pytest.raises(MarionetteError, match="not a combined MimicMotion checkpoint"):
        split_mimicmotion(on_meta(reference("stableanimator_pose_net")))
    del state["pose_net.scale"]
    with pytest.raises(MarionetteError, match="1 missing"):
        split_mimicmotion(state)


# ------------------------------------------------------------------------------------------ files
def small_state(dtype=torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(64, 32, generator=generator).to(dtype), "a.bias": torch.zeros(64, dtype=dtype)}


def assert_same(loaded, saved):
    assert set(loaded) == set(saved)  # safetensors stores names sorted
    for key in saved:
        assert loaded[key].dtype == saved[key].dtype and torch.equal(loaded[key], saved[key])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_safetensors_and_torch_files_round_trip_in_their_dtype(tmp_path, dtype):
    saved = small_state(dtype)
    save_file(saved, tmp_path / "w.safetensors")
    torch.save(saved, tmp_path / "w.pth")
    torch.save(saved, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("w.safetensors", "w.pth", "legacy.pt"):
        assert_same(load_state_dict_file(tmp_path / name), saved)


def test_training_wrappers_are_unwrapped(tmp_path):
    saved = small_state()
    torch.save({"step": 42000, "state_dict": saved, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt_iter_42000.pth.tar")
    torch.save({"module": saved}, tmp_path / "deepspeed.bin")
    assert_same(load_state_dict_file(tmp_path / "ckpt_iter_42000.pth.tar"), saved)
    assert_same(load_state_dict_file(tmp_path / "deepspeed.bin"), saved)
    torch.save({**saved, "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(MarionetteError, match="1 entries that are not named tensors .*epoch"):
        load_state_dict_file(tmp_path / "mixed.pth")


@pytest.mark.parametrize("file_name,keep", [("pose_net.pth", 0.5), ("pose_net.pth", 0.0),
                                            ("legacy.pth", 0.9), ("net.safetensors", 0.7),
                                            ("net.safetensors", 0.001)])
def test_truncated_files_are_reported_by_name(tmp_path, file_name, keep):
    path = tmp_path / file_name
    if file_name.endswith(".safetensors"):
        save_file(small_state(), path)
    else:
        torch.save(small_state(), path, _use_new_zipfile_serialization=not file_name.startswith("legacy"))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(MarionetteError, match=f"{file_name} .* is truncated or not a checkpoint"):
        load_state_dict_file(path)


def test_a_file_that_is_not_a_checkpoint_is_reported(tmp_path):
    path = tmp_path / "image.pth"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(MarionetteError, match="image.pth .* is truncated or not a checkpoint"):
        load_state_dict_file(path)


class Payload:
    """A pickled custom object: weights_only loading must refuse it."""


def test_pickled_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(MarionetteError, match="evil.pth holds Python objects besides tensors .*Payload"):
        load_state_dict_file(path)
    plain = tmp_path / "plain.pkl.bin"
    plain.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(MarionetteError, match="Python objects besides tensors .*Payload"):
        load_state_dict_file(plain)
    plain.write_bytes(pickle.dumps(Payload(), protocol=4))  # opcodes torch's safe loader does not read
    with pytest.raises(MarionetteError, match="not a checkpoint: the weights-only loader cannot read it"):
        load_state_dict_file(plain)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(MarionetteError, match="Checkpoint not found"):
        load_state_dict_file(tmp_path / "nope.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(MarionetteError, match="unsupported checkpoint type '.onnx'"):
        load_state_dict_file(tmp_path / "model.onnx")


def test_load_checkpoint_recognises_the_file_and_checks_what_fits(tmp_path):
    source = PoseNet()
    weights = {k: v.half() for k, v in source.state_dict().items()}
    save_file(weights, tmp_path / "mimic_motion_pose_net.safetensors")
    variant, loaded = load_checkpoint(tmp_path / "mimic_motion_pose_net.safetensors",
                                      allowed=("mimicmotion_pose_net", "stableanimator_pose_net"))
    assert variant == "mimicmotion_pose_net"
    assert_same(loaded, weights)
    torch.save(source.state_dict(), tmp_path / "pose_net.pth")
    with pytest.raises(MarionetteError, match="pose_net.pth is the StableAnimator PoseNet, which does not fit"
                                              ".*Animation/unet.pth"):
        load_checkpoint(tmp_path / "pose_net.pth", allowed=("stableanimator_unet",))
