"""The family's VAE (sd-vae-ft-mse) from a diffusers folder or a ComfyUI models/vae single file in LDM naming
(made here with ComfyUI 0.3.75's own diffusers->LDM converter) or diffusers naming; other files refused."""
import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import comfy_model_code
from marionette.models.errors import MarionetteError
from marionette.models.sd15.refnet_tiny import TINY_VAE, tiny_vae
from marionette.models.sd15.vae import is_sd_vae, load_vae

TINY_CONFIG = {**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_VAE.items()},
               "in_channels": 3, "out_channels": 3, "norm_num_groups": 32, "scaling_factor": 0.18215}


def same(a, b):
    """Same weights under the same names, and the same encodings and decodings."""
    x, z = torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        outputs = torch.equal(a.encode(x).latent_dist.mean, b.encode(x).latent_dist.mean) and torch.equal(
            a.decode(z).sample, b.decode(z).sample)
    sa, sb = a.state_dict(), b.state_dict()
    return outputs and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_diffusers_folder_and_its_parent(tmp_path):
    vae = tiny_vae(seed=4)
    folder = tmp_path / "sd-vae-ft-mse"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY_CONFIG, "_class_name": "AutoencoderKL"}))
    weights = folder / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(weights))
    assert same(load_vae(folder, torch.float32), vae)
    parent = tmp_path / "bundle"
    (parent / "vae").mkdir(parents=True)
    for item in folder.iterdir():
        (parent / "vae" / item.name).write_bytes(item.read_bytes())
    assert same(load_vae(parent, torch.float32), vae)
    assert not is_sd_vae(vae)


def test_comfyui_single_files_ldm_and_diffusers_naming(tmp_path):
    comfy_model_code()
    from comfy.diffusers_convert import convert_vae_state_dict
    vae = tiny_vae(seed=5)
    ldm = convert_vae_state_dict({k: v.clone() for k, v in vae.state_dict().items()})
    assert any(k.startswith("encoder.down.") for k in ldm)
    path = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    assert same(load_vae(path, torch.float32, config=TINY_CONFIG), vae)
    plain = tmp_path / "vae_diffusers.pth"
    torch.save(vae.state_dict(), plain)
    assert same(load_vae(plain, torch.float32, config=TINY_CONFIG), vae)


def test_other_files_are_refused(tmp_path):
    full = tmp_path / "v1-5-pruned-emaonly.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(1), "first_stage_model.encoder.conv_in.weight": torch.zeros(1)},
              str(full))
    with pytest.raises(MarionetteError, match="whole Stable Diffusion checkpoint"):
        load_vae(full)
    other = tmp_path / "vae.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(other))
    with pytest.raises(MarionetteError, match="does not fit the SD VAE"):
        load_vae(other)
