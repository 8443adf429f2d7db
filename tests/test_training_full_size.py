"""Full-size VividPose training: the paper's init from an SVD-xt diffusers folder and an SD2.1 UNet file.

A tiny SVD-xt-shaped folder (UNet, temporal VAE, CLIP encoder, feature extractor, scheduler) and a tiny
SD2.1-layout UNet file stand in for the real ones; the full-size architecture is checked on the meta device
against the released SVD-xt UNet's key list (../shared/reference/keys/mimicmotion_1-1.json, `unet.*`).
"""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import ROOT
from marionette.models.errors import MarionetteError
from marionette.models.pipelines.svd_tiny import tiny_animation_model
from marionette.models.pipelines.vividpose import animate_vividpose, load_vividpose_animation
from marionette.models.svd.configs import svd_xt_unet_config, tiny_unet_config
from marionette.models.svd.sampler import SamplerSettings
from marionette.models.training.engine import TrainSettings, train
from marionette.models.training.initialise import init_unet_from_svd, is_id_processor_key
from marionette.models.training.vividpose_task import VividPoseTask, VividPoseTaskConfig
from marionette.models.vividpose.checkpoint import companion_specs, read_metadata
from marionette.models.vividpose.config import reference_net_config_from_svd
from marionette.models.vividpose.model import VividPose, build_vividpose

sys.path.insert(0, os.path.dirname(__file__))
from test_training import tiny_data  # noqa: E402,F401  (the session's tiny prepared dataset)

KEYS = ROOT.parent / "shared" / "reference" / "keys" / "mimicmotion_1-1.json"
TINY_POSE = dict(pose_channels=(8, 16, 16, 32), pose_heads=2)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """{'svd': a tiny stable-video-diffusion-img2vid-xt folder, 'sd21': a tiny SD2.1 UNet file}."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor
    root = tmp_path_factory.mktemp("pretrained")
    svd = root / "stable-video-diffusion-img2vid-xt"
    base = tiny_animation_model("mimicmotion", seed=1)
    torch.manual_seed(2)
    UNetSpatioTemporalConditionModel(**tiny_unet_config()).save_pretrained(svd / "unet")
    base.vae.save_pretrained(svd / "vae")
    base.image_encoder.save_pretrained(svd / "image_encoder")
    CLIPImageProcessor().save_pretrained(svd / "feature_extractor")
    EulerDiscreteScheduler().save_config(svd / "scheduler")
    sd21 = UNet2DConditionModel.from_config(reference_net_config_from_svd(tiny_unet_config()))
    save_file({k: v.contiguous() for k, v in sd21.state_dict().items()}, str(root / "sd21_unet.safetensors"))
    return {"svd": str(svd), "sd21": str(root / "sd21_unet.safetensors")}


def _file(folder, part, name):
    return load_file(os.path.join(folder, part, name))


def _equal(ours: dict, theirs: dict) -> bool:
    return set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k].to(ours[k].dtype)) for k in theirs)


# -------------------------------------------------------------------------------------------- config
def test_exactly_one_of_autoencoder_and_svd():
    with pytest.raises(MarionetteError, match="exactly one"):
        VividPoseTaskConfig(data="d")
    with pytest.raises(MarionetteError, match="exactly one"):
        VividPoseTaskConfig(data="d", autoencoder="ae", svd="svd")
    with pytest.raises(MarionetteError, match="--svd"):
        VividPoseTaskConfig(data="d", autoencoder="ae", sd21="sd21.safetensors")
    with pytest.raises(MarionetteError, match="frozen"):
        VividPoseTaskConfig(data="d", svd="svd", train_image_encoder=True)


def test_the_sizes_have_their_defaults_and_the_small_saved_config_is_unchanged():
    small = VividPoseTask(VividPoseTaskConfig(data="d", autoencoder="ae")).config()
    assert "svd" not in small and "sd21" not in small  # states saved before the full size resume as before
    assert small["train_image_encoder"] is True and small["unet"]["block_out_channels"] == [32, 64, 96]
    assert small["pose_channels"] == (16, 32, 64, 128) and small["pose_heads"] == 4
    full = VividPoseTask(VividPoseTaskConfig(data="d", svd="svd", sd21="sd21")).config()
    assert "autoencoder" not in full and full["svd"] == "svd" and full["sd21"] == "sd21"
    assert full["train_image_encoder"] is False and full["pose_channels"] == (16, 32, 96, 256)
    assert full["pose_heads"] == 8
    json.dumps(full)  # it goes into the resumable state's JSON


def test_full_size_config_builds_svd_xts_unet_plus_only_the_identity_projections():
    if not KEYS.is_file():
        pytest.skip(f"{KEYS} (the reference key lists) is not in this checkout")
    reference = json.loads(KEYS.read_text())["keys"]
    svd_keys = {k[len("unet."):]: tuple(v) for k, v in reference.items() if k.startswith("unet.")}
    assert len(svd_keys) == 1428
    task = VividPoseTask(VividPoseTaskConfig(data="d", svd="svd", frames=14, identity=True))
    config = task.vividpose_config(0.18215, svd_xt_unet_config())
    assert config.pose_channels == (16, 32, 96, 256) and config.pose_heads == 8
    assert config.reference_latent_scale == 0.18215 and config.unet["num_frames"] == 14
    assert config.extras["vae"] == "SVD-xt (frozen)" and config.extras["image_encoder"] == "SVD-xt CLIP ViT-H (frozen)"
    with torch.device("meta"):
        model = build_vividpose(config)
    ours = {k: tuple(v.shape) for k, v in model.unet.state_dict().items()}
    added = {k for k in ours if k not in svd_keys}
    assert added and all(is_id_processor_key(k) for k in added) and len(added) == 3 * 32
    assert {k: ours[k] for k in svd_keys} == svd_keys


def test_svd_init_refuses_mismatches_by_name_and_rederives_the_identity_projections():
    from marionette.models.vividpose.config import tiny_config
    torch.manual_seed(0)
    svd = build_vividpose(tiny_config(identity=False)).unet.state_dict()
    model = build_vividpose(tiny_config(identity=True))
    init_unet_from_svd(model, svd, "svd_unet.safetensors")
    state = model.unet.state_dict()
    assert all(torch.equal(state[k], v) for k, v in svd.items())
    for name, tensor in state.items():
        if name.endswith("processor.id_to_q.weight"):
            assert torch.equal(tensor, svd[name.replace("processor.id_to_q", "to_q")])
        if name.endswith("processor.id_to_v.weight"):
            assert not tensor.any()
    lacking = {k: v for k, v in svd.items() if k != "conv_in.weight"}
    with pytest.raises(MarionetteError, match="missing: conv_in.weight"):
        init_unet_from_svd(model, lacking, "svd_unet.safetensors")
    reshaped = dict(svd, **{"conv_out.bias": torch.zeros(5)})
    with pytest.raises(MarionetteError, match="conv_out.bias"):
        init_unet_from_svd(model, reshaped, "svd_unet.safetensors")


def test_the_command_takes_svd_or_autoencoder():
    from marionette.models.training.__main__ import _parser
    args = _parser().parse_args(["vividpose", "--data", "d", "--svd", "f", "--sd21", "u", "--output-dir", "o"])
    assert (args.svd, args.sd21, args.autoencoder) == ("f", "u", None)
    with pytest.raises(SystemExit):
        _parser().parse_args(["vividpose", "--data", "d", "--svd", "f", "--autoencoder", "a", "--output-dir", "o"])


# ------------------------------------------------------------------------------------------ training
def test_two_full_size_steps_from_svd_and_sd21_and_the_export_animates(tiny_data, pretrained, tmp_path):
    data, _ = tiny_data
    svd, sd21 = pretrained["svd"], pretrained["sd21"]
    task = VividPoseTask(VividPoseTaskConfig(data=data, svd=svd, sd21=sd21, frames=4, drop_probability=0.0,
                                             **TINY_POSE))
    at_start = {}

    def record(step, module):
        if step == 0:  # gradients ready, weights not yet stepped
            at_start.update({part: {k: v.detach().clone() for k, v in getattr(module.model, part).state_dict().items()}
                             for part in ("unet", "reference_net")})
            at_start["trained"] = {k for k, p in module.named_parameters() if p.requires_grad}

    settings = TrainSettings(output_dir=str(tmp_path), steps=2, batch_size=1, learning_rate=1e-3, ema_decay=0.0,
                             save_every=1000)
    result = train(task, settings, progress=False, on_gradients=record)
    plain = result["module"]
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))

    svd_unet = _file(svd, "unet", "diffusion_pytorch_model.safetensors")
    assert _equal(at_start["unet"], svd_unet)  # identity off: no id processors, SVD's UNet exactly
    assert _equal(at_start["reference_net"], load_file(sd21))
    assert not _equal({k: v for k, v in plain.model.unet.state_dict().items()}, svd_unet)  # it trained
    vae = _file(svd, "vae", "diffusion_pytorch_model.safetensors")
    encoder = _file(svd, "image_encoder", "model.safetensors")
    assert _equal(plain.vae.state_dict(), vae)
    assert all(torch.equal(plain.image_encoder.state_dict()[k], v) for k, v in encoder.items())
    assert not any(k.startswith(("vae.", "image_encoder.")) for k in at_start["trained"])
    saved = load_file(os.path.join(tmp_path, "state", "trainable.safetensors"))
    assert saved and not any(k.startswith(("vae.", "image_encoder.")) for k in saved)

    export = result["export"]
    assert companion_specs(export) == {}
    extras = json.loads(read_metadata(export)["config"])["extras"]
    assert extras["vae"] == "SVD-xt (frozen)" and extras["reference_net_init"] == "SD2.1 (sd21_unet.safetensors)"
    net = load_vividpose_animation(export, svd, dtype=torch.float32)
    assert _equal(net.model.state_dict(), plain.model.state_dict())
    assert _equal(net.vae.state_dict(), vae)
    from marionette.models.training.dataset import ClipDataset
    clip = ClipDataset(data, split="train", frames=4, anchor=True)[0]

    def image(x):  # the animation pipeline takes sides that are multiples of 64
        x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).float() / 255.0, size=(64, 64), mode="bilinear")
        return x.permute(0, 2, 3, 1)

    frames = animate_vividpose(net, image(clip["reference"][None]), image(clip["skeleton"]), image(clip["render"]),
                               SamplerSettings(steps=2, tile_size=4, tile_overlap=1), device=torch.device("cpu")).frames
    assert tuple(frames.shape) == (4, 64, 64, 3) and torch.isfinite(frames).all()
