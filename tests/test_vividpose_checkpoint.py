"""VividPose checkpoints: the config travels in the safetensors metadata, loading is strict and names
what does not fit; the ReferenceNet initialises from an SD2.1 UNet file."""
import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from marionette.models.errors import MarionetteError
from marionette.models.vividpose.checkpoint import load_vividpose, read_metadata, save_vividpose
from marionette.models.vividpose.config import FORMAT, tiny_config
from marionette.models.vividpose.sd21 import init_reference_net_from_sd21
from marionette.models.vividpose.tiny import tiny_vividpose


def _out(model, frames=2):
    gen = torch.Generator().manual_seed(5)
    clip = torch.randn(1, 1, model.config.context_dim, generator=gen)
    sample = torch.randn(1, frames, 8, 8, 8, generator=gen)
    render, skeleton = torch.rand(2, frames, 3, 64, 64, generator=gen)
    tokens = model.identity_tokens(torch.randn(1, 512, generator=gen)) if model.id_controller else None
    features = model.reference_features(torch.randn(1, 4, 8, 8, generator=gen), clip)
    with model.reference_attention(features):
        return model(sample, torch.tensor(0.1), model.context(clip, tokens), torch.tensor([[6.0, 127.0, 0.02]]),
                     model.pose_features(render, skeleton))[0]


@pytest.mark.parametrize("overrides", [dict(pose_injection="latent"),
                                       dict(pose_injection="conv_in", id_tokens=3, render_type="normal"),
                                       dict(identity=False, extras={"vae": "pixel_unshuffle"})])
def test_round_trip_rebuilds_the_architecture_from_the_metadata(tmp_path, overrides):
    model = tiny_vividpose(1, tiny_config(**overrides))
    path = tmp_path / "vividpose.safetensors"
    save_vividpose(model, path, metadata={"command": "train --steps 1"})
    metadata = read_metadata(path)
    assert metadata["format"] == FORMAT and metadata["command"] == "train --steps 1"
    assert json.loads(metadata["config"])["pose_injection"] == model.config.pose_injection
    loaded = load_vividpose(path)
    assert loaded.config == model.config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    # same weights, same maths (memory-mapped tensors may take other SIMD paths: float rounding only)
    assert (_out(loaded) - _out(model)).abs().max() <= 1e-5


def _saved(tmp_path, model, state=None, metadata=None, name="model.safetensors"):
    path = tmp_path / name
    state = model.state_dict() if state is None else state
    info = {"format": FORMAT, "format_version": "1", "config": model.config.to_json()}
    info.update(metadata or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=info)
    return path


def test_missing_unexpected_and_reshaped_tensors_are_named(tmp_path):
    model = tiny_vividpose(0)
    state = dict(model.state_dict())
    gone = "pose_controller.render.conv_out.weight"
    del state[gone]
    state["pose_controller.extra.weight"] = torch.zeros(1)
    with pytest.raises(MarionetteError, match=r"1 missing: pose_controller\.render\.conv_out\.weight.*"
                                              r"1 unexpected: pose_controller\.extra\.weight"):
        load_vividpose(_saved(tmp_path, model, state))


def test_injection_point_cannot_be_mismatched(tmp_path):
    """Weights of a conv_in model under metadata saying 'latent': the zero convs' shapes are named."""
    conv_in = tiny_vividpose(0, tiny_config(pose_injection="conv_in"))
    latent = tiny_vividpose(0, tiny_config(pose_injection="latent"))
    path = _saved(tmp_path, latent, state=conv_in.state_dict())
    with pytest.raises(MarionetteError, match=r"of another shape: pose_controller\.render\.conv_out\.bias \(32,\) "
                                              r"\(model \(4,\)\)"):
        load_vividpose(path)


def test_other_files_are_refused_by_name(tmp_path):
    model = tiny_vividpose(0)
    plain = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(MarionetteError, match="other.safetensors is not a VividPose checkpoint"):
        load_vividpose(plain)
    pickle = tmp_path / "model.pth"
    torch.save(model.state_dict(), pickle)
    with pytest.raises(MarionetteError, match="are .safetensors files"):
        load_vividpose(pickle)
    newer = _saved(tmp_path, model, metadata={"format_version": "2"}, name="newer.safetensors")
    with pytest.raises(MarionetteError, match="format version '2'"):
        load_vividpose(newer)
    config = json.loads(model.config.to_json())
    config["future_option"] = 1
    future = _saved(tmp_path, model, metadata={"config": json.dumps(config)}, name="future.safetensors")
    with pytest.raises(MarionetteError, match="unknown entries: \\['future_option'\\]"):
        load_vividpose(future)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(_saved(tmp_path, model).read_bytes()[:300])
    with pytest.raises(MarionetteError, match="cut.safetensors is truncated"):
        load_vividpose(truncated)


def test_reference_net_initialises_from_an_sd21_unet_file(tmp_path):
    model = tiny_vividpose(0)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        sd21 = UNet2DConditionModel.from_config(model.config.reference_net)  # an "SD2.1" of the tiny size
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(sd21.state_dict(), str(path))
    init_reference_net_from_sd21(model, path)
    own = model.reference_net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd21.state_dict().items()) and len(own) == len(sd21.state_dict())
    wrong = dict(sd21.state_dict())
    wrong.pop("conv_in.weight")
    save_file(wrong, str(tmp_path / "sd15_like.safetensors"))
    with pytest.raises(MarionetteError, match=r"sd15_like.safetensors does not fit VividPose's SD2.1-layout "
                                              r"ReferenceNet: 1 missing: conv_in\.weight"):
        init_reference_net_from_sd21(model, tmp_path / "sd15_like.safetensors")


def test_reference_net_initialises_from_an_sd21_single_file(tmp_path):
    """The single-file release (LDM names `model.diffusion_model.*`, written here from the LDM layout, not by
    our converter) lands on the same tensors as the diffusers file."""
    from dispose_dift_fixture import ldm_unet_name
    model = tiny_vividpose(0)
    config = dict(model.config.reference_net)
    with torch.random.fork_rng():
        torch.manual_seed(8)
        sd21 = UNet2DConditionModel.from_config(config)
    state = {"model.diffusion_model." + ldm_unet_name(k, config): v for k, v in sd21.state_dict().items()}
    state["cond_stage_model.model.token_embedding.weight"] = torch.zeros(4, 2)  # other parts of the file: ignored
    save_file(state, str(tmp_path / "v2-1_512-ema-pruned.safetensors"))
    init_reference_net_from_sd21(model, tmp_path / "v2-1_512-ema-pruned.safetensors")
    own = model.reference_net.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd21.state_dict().items())


def test_full_size_reference_net_has_sd21s_tensors_and_lines_up_with_svd_xt():
    """Stable Diffusion 2.1's unet/config.json (stabilityai/stable-diffusion-2-1) builds exactly the tensors
    of the ReferenceNet VividPose derives from SVD-xt, and each of its self-attentions has the width of the
    SVD-xt layer of the same name."""
    from marionette.models.vividpose.config import VividPoseConfig
    from marionette.models.vividpose.model import build_vividpose
    sd21_config = {"act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
                   "block_out_channels": [320, 640, 1280, 1280],
                   "center_input_sample": False, "cross_attention_dim": 1024,
                   "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                        "DownBlock2D"],
                   "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
                   "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
                   "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
                   "sample_size": 96, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                         "CrossAttnUpBlock2D"],
                   "upcast_attention": True, "use_linear_projection": True}
    with torch.device("meta"):
        sd21 = UNet2DConditionModel.from_config(sd21_config)
        model = build_vividpose(VividPoseConfig())
    ours = {k: tuple(v.shape) for k, v in model.reference_net.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in sd21.state_dict().items()}
    unet_layers = {n: m for n, m in model.unet.named_modules() if n.endswith(".attn1") and ".transformer_blocks." in n}
    assert len(unet_layers) == 16



def test_a_bundled_patch_latent_round_trips_and_non_orthonormal_patterns_are_refused(tmp_path):
    """All 192 patterns of 8x8 patches, left as the identity, are torch's pixel unshuffle / shuffle (the
    independent reference); bundled like a VAE it loads back as it was; patterns that are not orthonormal
    would not invert, so loading refuses them."""
    from marionette.models.vividpose.checkpoint import load_companions
    from marionette.models.vividpose.patch_latent import PatchLatent
    latent = PatchLatent(192, 8, scaling_factor=2.5)
    x = torch.rand(3, 3, 48, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = latent.encode(x).latent_dist.mode()
    assert torch.equal(z, torch.nn.PixelUnshuffle(8)(x)) and z.shape == (3, 192, 6, 4)
    assert torch.equal(latent.decode(z, num_frames=3).sample, x)
    with torch.no_grad():
        latent.mean.fill_(0.25)
        latent.scale.fill_(2.0)
    model = tiny_vividpose(1, tiny_config(identity=False))
    path = tmp_path / "patch.safetensors"
    save_vividpose(model, path, companions={"vae": latent}, dtype=torch.float16)
    loaded = load_companions(path, torch.float16)["vae"]
    assert isinstance(loaded, PatchLatent) and loaded.config.scaling_factor == 2.5
    half = x.half()
    assert torch.allclose(loaded.encode(half).latent_dist.mode(), (torch.nn.PixelUnshuffle(8)(half) - 0.25) / 2)
    decoded = loaded.decode(loaded.encode(half).latent_dist.mode()).sample
    assert torch.allclose(decoded, half, atol=1e-3)  # fp16 rounding of the mean patch
    state = load_file(str(path))
    state["vae.basis"][0] *= 2
    save_file(state, str(path), metadata=read_metadata(path))
    with pytest.raises(MarionetteError, match="not orthonormal"):
        load_companions(path)
    with pytest.raises(MarionetteError, match="multiples of 8"):
        latent.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(MarionetteError, match="1..192 components"):
        PatchLatent(193, 8)
