"""DisPose's SD1.5 pieces against the real ComfyUI (0.3.75) code (host tier).

- The committed key list `tests/data/keys/sd15_single_file.json` is what ComfyUI's own SD1.5 modules, built at
  full size on the meta device, save under a single file's prefixes (and ComfyUI detects that key set as
  SD15). Regenerate with `python tests/test_host_dispose_dift.py`.
- The fixed prompt's token ids are what SD1.5's CLIP tokenizer (ComfyUI's copy of openai/clip-vit-large-patch14's
  vocab.json / merges.txt) gives, through transformers' CLIPTokenizer and through ComfyUI's SD1Tokenizer.
- The LDM names the test fixture writes are ComfyUI's (its diffusers->LDM maps for UNet and VAE).
- Numerical parity: ComfyUI's tiny UNetModel and AutoencoderKL running the single-file weights give the same
  outputs as the diffusers modules our loader fills from that file.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import comfy_model_code  # noqa: E402
from dispose_dift_fixture import (TINY_UNET, ldm_unet_name, single_file_state, tiny_configs,  # noqa: E402
                                  tiny_modules)

KEYS_JSON = Path(__file__).resolve().parent / "data" / "keys" / "sd15_single_file.json"
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}  # comfy/sd.py


def _import_comfy():
    comfy_dir = comfy_model_code()
    import comfy.diffusers_convert
    import comfy.model_detection
    import comfy.ops
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.utils
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return {"detection": comfy.model_detection, "ops": comfy.ops, "sd1_clip": comfy.sd1_clip,
            "models": comfy.supported_models, "utils": comfy.utils, "vae_convert": comfy.diffusers_convert,
            "AutoencoderKL": AutoencoderKL, "UNetModel": UNetModel, "dir": comfy_dir}


def _unet_kwargs(host, diffusers_unet) -> dict:
    """The UNetModel arguments ComfyUI derives from a diffusers UNet's state dict (it knows the full-size
    families only); for the tiny UNet, SD1.5's with the tiny widths and depths."""
    from marionette.models.sd15 import loader as sd15
    config = host["detection"].unet_config_from_diffusers_unet(diffusers_unet.state_dict())
    if config is not None:
        return config
    full = sd15._empty_modules(sd15.sd15_configs())["unet"]
    config = dict(host["detection"].unet_config_from_diffusers_unet(full.state_dict()))
    levels, per = len(TINY_UNET["block_out_channels"]), TINY_UNET["layers_per_block"]
    base = TINY_UNET["block_out_channels"][0]
    attention = [1] * (levels - 1) + [0]  # cross-attention on every level but the deepest, as SD1.5
    config.update(model_channels=base, channel_mult=[c // base for c in TINY_UNET["block_out_channels"]],
                  num_res_blocks=[per] * levels, context_dim=TINY_UNET["cross_attention_dim"],
                  num_heads=TINY_UNET["attention_head_dim"],
                  transformer_depth=[a for a in attention for _ in range(per)],
                  transformer_depth_output=[a for a in attention for _ in range(per + 1)])
    return config


def single_file_layout() -> dict:
    """key -> shape of an SD1.5 single file as ComfyUI's modules save it (full size, meta device)."""
    from marionette.models.sd15 import loader as sd15
    host = _import_comfy()
    diffusers_unet = sd15._empty_modules(sd15.sd15_configs())["unet"]
    with torch.device("meta"):
        unet = host["UNetModel"](**_unet_kwargs(host, diffusers_unet), operations=host["ops"].disable_weight_init)
        vae = host["AutoencoderKL"](ddconfig=VAE_DDCONFIG, embed_dim=4)
    clip = host["sd1_clip"].SDClipModel(device="meta")
    clip_state = host["models"].SD15({}).process_clip_state_dict_for_saving(
        {"clip_l." + k: v for k, v in clip.state_dict().items()})
    keys = {"model.diffusion_model." + k: list(v.shape) for k, v in unet.state_dict().items()}
    keys.update({"first_stage_model." + k: list(v.shape) for k, v in vae.state_dict().items()})
    keys.update({k: list(v.shape) for k, v in clip_state.items()})
    return keys


def write_layout_json(path: Path = KEYS_JSON) -> None:
    keys = single_file_layout()
    numel = 0
    for shape in keys.values():
        count = 1
        for size in shape:
            count *= size
        numel += count
    document = {
        "source": "ComfyUI 0.3.75 modules on the meta device with the names its checkpoint saver writes for SD15: "
                  "UNetModel with the config model_detection derives from diffusers' SD1.5 UNet, under "
                  "model.diffusion_model.; AutoencoderKL (comfy/sd.py ddconfig, embed_dim 4) under "
                  "first_stage_model.; SDClipModel (sd1_clip_config.json) through "
                  "SD15.process_clip_state_dict_for_saving, under cond_stage_model.transformer.text_model.",
        "files": "v1-5-pruned-emaonly.safetensors / -fp16 / .ckpt hold these plus the DDPM schedule buffers and "
                 "cond_stage_model.transformer.text_model.embeddings.position_ids; v1-5-pruned.* also model_ema.*.",
        "count": len(keys), "numel": numel,
        "keys": keys,
    }
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def test_committed_layout_is_comfyuis_and_detected_as_sd15():
    host = _import_comfy()
    layout = single_file_layout()
    committed = json.loads(KEYS_JSON.read_text(encoding="utf-8"))
    assert committed["keys"] == layout and committed["count"] == len(layout) == 1130
    state = {k: torch.empty(v, device="meta") for k, v in layout.items()}
    detected = host["detection"].model_config_from_unet(state, "model.diffusion_model.")
    assert type(detected).__name__ == "SD15"


def test_prompt_token_ids_are_the_sd15_tokenizers():
    from transformers import CLIPTokenizer

    from marionette.models.dispose import dift
    host = _import_comfy()
    folder = os.path.join(host["dir"], "comfy", "sd1_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    ids = tokenizer(dift.DIFT_PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert tuple(ids) == dift.PROMPT_TOKEN_IDS
    assert tokenizer.convert_ids_to_tokens(list(ids[:6])) == [
        "<|startoftext|>", "photo</w>", "of</w>", "a</w>", "human</w>", "<|endoftext|>"]
    assert tokenizer.pad_token == "<|endoftext|>"
    comfy_tokens = host["sd1_clip"].SD1Tokenizer().tokenize_with_weights(dift.DIFT_PROMPT)["l"]
    assert len(comfy_tokens) == 1 and tuple(token for token, _ in comfy_tokens[0]) == dift.PROMPT_TOKEN_IDS


def test_fixture_ldm_names_are_comfyuis():
    from marionette.models.sd15 import loader as sd15
    host = _import_comfy()
    tiny = tiny_modules(seed=0)
    full_unet = sd15._empty_modules(sd15.sd15_configs())["unet"]
    for unet in (tiny["unet"], full_unet):
        comfy_map = host["utils"].unet_to_diffusers(_unet_kwargs(host, unet))  # diffusers name -> LDM name
        config = dict(unet.config)
        ours = {k: ldm_unet_name(k, config) for k in unet.state_dict()}
        assert {k: comfy_map[k] for k in ours} == ours
    comfy_vae = host["vae_convert"].convert_vae_state_dict(tiny["vae"].state_dict())
    ours_vae = {k[len("first_stage_model."):]: v for k, v in single_file_state(tiny).items()
                if k.startswith("first_stage_model.")}
    assert {k: tuple(v.shape) for k, v in comfy_vae.items()} == {k: tuple(v.shape) for k, v in ours_vae.items()}
    assert all(torch.equal(comfy_vae[k], ours_vae[k]) for k in ours_vae)


def test_comfyui_modules_agree_with_the_loaded_modules(tmp_path):
    from safetensors.torch import save_file

    from marionette.models.sd15 import loader as sd15
    host = _import_comfy()
    tiny = tiny_modules(seed=5)
    state = single_file_state(tiny)
    path = tmp_path / "tiny_sd15.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    parts = sd15.load_sd15_single_file(path, torch.float32, configs=tiny_configs())

    comfy_unet = host["UNetModel"](**_unet_kwargs(host, tiny["unet"]), operations=host["ops"].disable_weight_init)
    comfy_unet.load_state_dict({k[len("model.diffusion_model."):]: v for k, v in state.items()
                                if k.startswith("model.diffusion_model.")}, strict=True)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, TINY_UNET["cross_attention_dim"], generator=generator)
    timesteps = torch.tensor([261.0, 40.0])
    with torch.no_grad():
        theirs = comfy_unet.eval()(sample, timesteps, context)
        ours = parts.unet(sample, timesteps, encoder_hidden_states=context).sample
    assert (ours - theirs).abs().max() < 1e-4 * theirs.abs().max()

    ddconfig = dict(VAE_DDCONFIG, ch=32, ch_mult=[1, 1, 1, 2])
    comfy_vae = host["AutoencoderKL"](ddconfig=ddconfig, embed_dim=4)
    comfy_vae.load_state_dict({k[len("first_stage_model."):]: v for k, v in state.items()
                               if k.startswith("first_stage_model.")}, strict=True)
    image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        theirs = comfy_vae.eval().encode(image)  # the posterior mode
        ours = parts.vae.encode(image).latent_dist.mean
    assert (ours - theirs).abs().max() < 1e-4 * theirs.abs().max()


if __name__ == "__main__":
    write_layout_json()
    print(f"wrote {KEYS_JSON}")
