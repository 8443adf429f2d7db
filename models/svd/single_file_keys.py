"""Key maps from ComfyUI's single-file SVD checkpoints (SGM naming) to the diffusers / transformers modules.

Facts about the files (`svd_xt.safetensors`, `svd_xt_1_1.safetensors`, `svd_xt_image_decoder.safetensors`,
and the 14-frame `svd.safetensors` / `svd_image_decoder.safetensors`, which have the same layout): they are
`sgm.models.diffusion.DiffusionEngine.state_dict()` of Stability's `configs/inference/svd.yaml`:
- `model.diffusion_model.*`: the VideoUNet (1428 tensors, the same count as diffusers' UNet);
- `first_stage_model.encoder.*` (106) and `first_stage_model.decoder.*`: the temporal "VideoDecoder" (266,
  with `time_stack` resnets, `mix_factor` and `conv_out.time_mix_conv`), or in the `*_image_decoder` files a
  plain frame-wise image decoder (138);
- `conditioner.embedders.0.open_clip.model.*`: open_clip ViT-H/14 without its text transformer: the visual
  tower (`visual.*`, 392 tensors with fused `attn.in_proj_*` and a `proj` matrix) plus six text leftovers;
- `conditioner.embedders.3.encoder.*`: the `AutoencoderKLModeOnly` that encodes the conditioning frame in the
  official SGM inference (encoder, `quant_conv`, and an unused decoder and `post_quant_conv`).

The diffusers VAE (`AutoencoderKLTemporalDecoder`) has a learned `quant_conv`, which only the conditioning
autoencoder of embedder 3 holds, so its encoder and `quant_conv` come from there (the official inference
path; diffusers' own SVD weights were converted this way) and its decoder from `first_stage_model`.
`first_stage_model.encoder` is then unused. Files saved by ComfyUI's ImageOnlyCheckpointSave lack embedder 3
and hold the CLIP tower in transformers naming under the same prefix; for them the encoder comes from
`first_stage_model.encoder` with an identity `quant_conv`, which is exactly how ComfyUI encodes.

The maps are structural (block indices come from the keys present), so they serve tiny test models too.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..errors import MarionetteError
from .configs import svd_xt_unet_config

UNET = "model.diffusion_model."
FIRST_STAGE = "first_stage_model."
OPEN_CLIP = "conditioner.embedders.0.open_clip.model."
VISUAL = OPEN_CLIP + "visual."
COND_AE = "conditioner.embedders.3.encoder."

# Tensors the files hold that no module here uses (by exact name or by prefix).
# open_clip's text tower leftovers (SGM deletes only the text transformer), and ComfyUI's sampling extras.
UNUSED_EXACT = tuple(OPEN_CLIP + name for name in (
    "positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
    "ln_final.weight", "ln_final.bias")) + (
    "edm_vpred.sigma_max", "edm_vpred.sigma_min")  # written by ComfyUI's checkpoint save (sampling settings)
UNUSED_PREFIXES = (COND_AE + "decoder.", COND_AE + "post_quant_conv.")  # the conditioning autoencoder's decoder
UNUSED_WITH_COND_ENCODER = (FIRST_STAGE + "encoder.",)  # unused when embedder 3 provides the encoder

SVD_XT_VAE_CONFIG = {  # stable-video-diffusion-img2vid-xt(-1-1) vae/config.json
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "out_channels": 3,
    "sample_size": 768, "scaling_factor": 0.18215}
SVD_XT_IMAGE_ENCODER_CONFIG = {  # image_encoder/config.json (open_clip ViT-H/14 laion2b, visual tower)
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
    "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 32, "patch_size": 14, "projection_dim": 1024}
SVD_XT_SCHEDULER_CONFIG = {  # scheduler/scheduler_config.json
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "sigma_max": 700.0, "sigma_min": 0.002,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous",
    "trained_betas": None, "use_karras_sigmas": True}


class SingleFileConfigs(NamedTuple):
    """diffusers/transformers configs of the three modules a single file fills."""
    unet: dict
    vae: dict
    image_encoder: dict


def svd_xt_configs() -> SingleFileConfigs:
    """The SVD-xt module configs, shipped in code (fresh copies)."""
    return SingleFileConfigs(svd_xt_unet_config(), copy.deepcopy(SVD_XT_VAE_CONFIG),
                             copy.deepcopy(SVD_XT_IMAGE_ENCODER_CONFIG))


class Rule(NamedTuple):
    """One conversion step: `sources` (consumed file tensors) -> `targets` (names in module `part`).

    `kind` names a transform of the sources, or, for tensors the file does not have (`sources` empty), a
    generator that builds them from the shape of the file tensor `like` (read for its shape only)."""
    part: str
    targets: tuple[str, ...]
    sources: tuple[str, ...]
    kind: str = "copy"
    like: str | None = None


class Layout(NamedTuple):
    """Which variant of the single-file layout a key set is."""
    decoder: str  # "temporal" (VideoDecoder) or "image" (frame-wise decoder of the *_image_decoder files)
    encoder: str  # "conditioner" (embedder 3 + its quant_conv) or "first_stage" (identity quant_conv)
    clip: str  # "open_clip" (fused in_proj, proj) or "transformers" (ComfyUI-saved files)


# ------------------------------------------------------------------------------------------- helpers
def _ints(keys: Iterable[str], pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return sorted(found)


def _under(keys: Iterable[str], prefix: str) -> list[str]:
    return [k for k in keys if k.startswith(prefix)]


def _renamed(keys: Iterable[str], src: str, dst: str, part: str,
             inner: Callable[[str], tuple[str, str] | None]) -> list[Rule]:
    """Rules for every key under `src`: `inner(rest)` -> (new rest, kind), or None when `rest` is unknown
    (those keys stay unconsumed and are reported)."""
    rules = []
    for key in _under(keys, src):
        mapped = inner(key[len(src):])
        if mapped is not None:
            rules.append(Rule(part, (dst + mapped[0],), (key,), mapped[1]))
    return rules


def _table(pairs: tuple[tuple[str, str], ...], conv_to_linear: tuple[str, ...] = ()):
    """An inner renamer replacing the first matching leading segment of a name."""
    def inner(rest: str) -> tuple[str, str] | None:
        for old, new in pairs:
            if rest == old or rest.startswith(old + "."):
                renamed = new + rest[len(old):]
                kind = "conv_to_linear" if old in conv_to_linear and rest.endswith(".weight") else "copy"
                return renamed, kind
        return None
    return inner


# ------------------------------------------------------------------------------------------------ UNet
_UNET_RESNET = _table((
    ("in_layers.0", "spatial_res_block.norm1"), ("in_layers.2", "spatial_res_block.conv1"),
    ("emb_layers.1", "spatial_res_block.time_emb_proj"), ("out_layers.0", "spatial_res_block.norm2"),
    ("out_layers.3", "spatial_res_block.conv2"), ("skip_connection", "spatial_res_block.conv_shortcut"),
    ("time_stack.in_layers.0", "temporal_res_block.norm1"), ("time_stack.in_layers.2", "temporal_res_block.conv1"),
    ("time_stack.emb_layers.1", "temporal_res_block.time_emb_proj"),
    ("time_stack.out_layers.0", "temporal_res_block.norm2"), ("time_stack.out_layers.3", "temporal_res_block.conv2"),
    ("time_mixer", "time_mixer")))
_UNET_ATTENTION = _table((
    ("norm", "norm"), ("proj_in", "proj_in"), ("proj_out", "proj_out"),
    ("transformer_blocks", "transformer_blocks"), ("time_stack", "temporal_transformer_blocks"),
    ("time_pos_embed.0", "time_pos_embed.linear_1"), ("time_pos_embed.2", "time_pos_embed.linear_2"),
    ("time_mixer", "time_mixer")))


def _whole(rest: str) -> tuple[str, str]:
    return rest, "copy"


def _unet_rules(keys: list[str]) -> list[Rule]:
    """SGM VideoUNet -> diffusers UNetSpatioTemporalConditionModel. Down levels are read off the input
    blocks (a block with `0.op` is a level's downsampler); each up level has one block more than a down level."""
    def block(src_block: str, dst_module: str, inner) -> list[Rule]:
        return _renamed(keys, f"{UNET}{src_block}.", dst_module + ".", "unet", inner)

    rules = []
    for src, dst in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                     ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
                     ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
        rules += block(src, dst, _whole)
    level, layer, per_level = 0, 0, []
    for index in _ints(keys, re.escape(UNET) + r"input_blocks\.(\d+)\."):
        if index == 0:
            continue
        if f"{UNET}input_blocks.{index}.0.op.weight" in keys:
            rules += block(f"input_blocks.{index}.0.op", f"down_blocks.{level}.downsamplers.0.conv", _whole)
            per_level.append(layer)
            level, layer = level + 1, 0
            continue
        rules += block(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{layer}", _UNET_RESNET)
        rules += block(f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{layer}", _UNET_ATTENTION)
        layer += 1
    for sub, dst in ((0, "mid_block.resnets.0"), (1, "mid_block.attentions.0"), (2, "mid_block.resnets.1")):
        rules += block(f"middle_block.{sub}", dst, _UNET_ATTENTION if sub == 1 else _UNET_RESNET)
    up_layers = (per_level[0] if per_level else layer) + 1
    for index in _ints(keys, re.escape(UNET) + r"output_blocks\.(\d+)\."):
        up, j = divmod(index, up_layers)
        rules += block(f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{j}", _UNET_RESNET)
        for sub in (1, 2):
            name = f"output_blocks.{index}.{sub}"
            if any(k.startswith(f"{UNET}{name}.conv.") for k in keys):  # an upsampler (even if pruned)
                rules += block(f"{name}.conv", f"up_blocks.{up}.upsamplers.0.conv", _whole)
            elif sub == 1:
                rules += block(name, f"up_blocks.{up}.attentions.{j}", _UNET_ATTENTION)
    return rules


# ------------------------------------------------------------------------------------------------- VAE
_VAE_ATTENTION = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
_ATTENTION_CONVS = ("q", "k", "v", "proj_out")  # 1x1 convs in SGM, linear layers in diffusers
_ENCODER_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
                   ("nin_shortcut", "conv_shortcut"))
_DECODER_RESNET = tuple((old, "spatial_res_block." + new) for old, new in _ENCODER_RESNET) + (
    ("time_stack.in_layers.0", "temporal_res_block.norm1"), ("time_stack.in_layers.2", "temporal_res_block.conv1"),
    ("time_stack.out_layers.0", "temporal_res_block.norm2"), ("time_stack.out_layers.3", "temporal_res_block.conv2"),
    ("mix_factor", "time_mixer.mix_factor"))


def _encoder_rules(keys: list[str], src: str) -> list[Rule]:
    """SGM Encoder under `src` -> diffusers `encoder.*`."""
    pairs = [("conv_in", "conv_in", "plain"), ("norm_out", "conv_norm_out", "plain"),
             ("conv_out", "conv_out", "plain"), ("mid.block_1", "mid_block.resnets.0", "resnet"),
             ("mid.block_2", "mid_block.resnets.1", "resnet"), ("mid.attn_1", "mid_block.attentions.0", "attention")]
    for level in _ints(keys, re.escape(src) + r"down\.(\d+)\."):
        pairs.append((f"down.{level}.downsample.conv", f"down_blocks.{level}.downsamplers.0.conv", "plain"))
        pairs.append((f"down.{level}.block", f"down_blocks.{level}.resnets", "resnets"))
    return _renamed(keys, src, "encoder.", "vae", _vae_inner(pairs, _ENCODER_RESNET))


def _vae_inner(pairs: list[tuple[str, str, str]], resnet: tuple[tuple[str, str], ...]):
    """Renamer for an SGM encoder/decoder: (old module, new module, kind) prefixes, then the internals of a
    resnet, of a numbered list of resnets ("resnets": `<j>.<resnet part>`), of the attention, or as is."""
    inners = {"resnet": _table(resnet), "attention": _table(_VAE_ATTENTION, _ATTENTION_CONVS), "plain": _whole}

    def inner(rest: str) -> tuple[str, str] | None:
        for old, new, kind in pairs:
            if not rest.startswith(old + "."):
                continue
            tail = rest[len(old) + 1:]
            if kind == "resnets":
                index, _, tail = tail.partition(".")
                new, kind = f"{new}.{index}", "resnet"
            mapped = inners[kind](tail)
            return None if mapped is None else (f"{new}.{mapped[0]}", mapped[1])
        return None
    return inner


def _decoder_rules(keys: list[str], temporal: bool) -> list[Rule]:
    """SGM (Video)Decoder -> diffusers TemporalDecoder. SGM numbers up levels from the output resolution,
    diffusers from the latent one. A frame-wise decoder gets neutral temporal layers (exactly per frame)."""
    src = FIRST_STAGE + "decoder."
    levels = _ints(keys, re.escape(src) + r"up\.(\d+)\.")
    pairs = [("conv_in", "conv_in", "plain"), ("norm_out", "conv_norm_out", "plain"),
             ("conv_out.time_mix_conv", "time_conv_out", "plain"), ("conv_out", "conv_out", "plain"),
             ("mid.block_1", "mid_block.resnets.0", "resnet"), ("mid.block_2", "mid_block.resnets.1", "resnet"),
             ("mid.attn_1", "mid_block.attentions.0", "attention")]
    for level in levels:
        up = len(levels) - 1 - level
        pairs.append((f"up.{level}.upsample.conv", f"up_blocks.{up}.upsamplers.0.conv", "plain"))
        pairs.append((f"up.{level}.block", f"up_blocks.{up}.resnets", "resnets"))
    rules = _renamed(keys, src, "decoder.", "vae", _vae_inner(pairs, _DECODER_RESNET))
    if not temporal:
        rules += _neutral_temporal_rules(keys, src, levels)
    return rules


def _neutral_temporal_rules(keys: list[str], src: str, levels: list[int]) -> list[Rule]:
    """Temporal parts for a frame-wise decoder: identity temporal resnets (zero output convolutions), a blend
    weight of 0 for them, and an identity temporal output convolution."""
    resnets = [("mid.block_1", "mid_block.resnets.0"), ("mid.block_2", "mid_block.resnets.1")]
    for level in levels:
        for j in _ints(keys, re.escape(f"{src}up.{level}.block.") + r"(\d+)\."):
            resnets.append((f"up.{level}.block.{j}", f"up_blocks.{len(levels) - 1 - level}.resnets.{j}"))
    rules = []
    for old, new in resnets:
        like = f"{src}{old}.conv2.bias"
        temporal = f"decoder.{new}.temporal_res_block."
        for name, kind in (("norm1.weight", "ones"), ("norm1.bias", "zeros"), ("conv1.weight", "zeros_time_conv"),
                           ("conv1.bias", "zeros"), ("norm2.weight", "ones"), ("norm2.bias", "zeros"),
                           ("conv2.weight", "zeros_time_conv"), ("conv2.bias", "zeros")):
            rules.append(Rule("vae", (temporal + name,), (), kind, like))
        rules.append(Rule("vae", (f"decoder.{new}.time_mixer.mix_factor",), (), "spatial_only_mix", like))
    out = f"{src}conv_out.bias"
    rules += [Rule("vae", ("decoder.time_conv_out.weight",), (), "identity_time_conv", out),
              Rule("vae", ("decoder.time_conv_out.bias",), (), "zeros", out)]
    return rules


def _vae_rules(keys: list[str], layout: Layout) -> list[Rule]:
    if layout.encoder == "conditioner":
        rules = _encoder_rules(keys, COND_AE + "encoder.")
        rules += _renamed(keys, COND_AE + "quant_conv.", "quant_conv.", "vae", _whole)
    else:
        rules = _encoder_rules(keys, FIRST_STAGE + "encoder.")
        like = FIRST_STAGE + "encoder.conv_out.bias"
        rules += [Rule("vae", ("quant_conv.weight",), (), "identity_1x1", like),
                  Rule("vae", ("quant_conv.bias",), (), "zeros", like)]
    return rules + _decoder_rules(keys, layout.decoder == "temporal")


# ------------------------------------------------------------------------------------------------ CLIP
_CLIP_TOP = {"class_embedding": "vision_model.embeddings.class_embedding",
             "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
             "positional_embedding": "vision_model.embeddings.position_embedding.weight"}
_CLIP_LAYER = _table((("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                      ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")))


def _clip_inner(rest: str) -> tuple[str, str] | None:
    if rest in _CLIP_TOP:
        return _CLIP_TOP[rest], "copy"
    if rest == "proj":  # open_clip multiplies x @ proj; transformers' Linear stores the transpose
        return "visual_projection.weight", "transpose"
    for old, new in (("ln_pre.", "vision_model.pre_layrnorm."), ("ln_post.", "vision_model.post_layernorm.")):
        if rest.startswith(old):
            return new + rest[len(old):], "copy"
    match = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", rest)
    mapped = match and _CLIP_LAYER(match.group(2))
    return mapped and (f"vision_model.encoder.layers.{match.group(1)}.{mapped[0]}", mapped[1])


def _clip_rules(keys: list[str], layout: Layout) -> list[Rule]:
    if layout.clip == "transformers":
        return _renamed(keys, VISUAL, "", "image_encoder", _whole)
    rules = _renamed(keys, VISUAL, "", "image_encoder", _clip_inner)
    for key in _under(keys, VISUAL):  # fused q/k/v of nn.MultiheadAttention, stacked on dim 0
        match = re.fullmatch(re.escape(VISUAL) + r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        if match:
            layer, kind = match.groups()
            targets = tuple(f"vision_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}" for p in "qkv")
            rules.append(Rule("image_encoder", targets, (key,), "split3"))
    return rules


# ------------------------------------------------------------------------------------------------ plan
def detect_layout(keys: Iterable[str], label: str = "This checkpoint") -> Layout:
    """The layout variant of an SVD single file, or a MarionetteError naming what is missing."""
    keys = set(keys)
    if f"{FIRST_STAGE}decoder.conv_out.time_mix_conv.weight" in keys:
        decoder = "temporal"
    elif f"{FIRST_STAGE}decoder.conv_out.weight" in keys:
        decoder = "image"
    else:
        raise _incomplete(label, "no VAE decoder (first_stage_model.decoder.*)")
    if f"{COND_AE}encoder.conv_in.weight" in keys:
        encoder = "conditioner"
    elif f"{FIRST_STAGE}encoder.conv_in.weight" in keys:
        encoder = "first_stage"
    else:
        raise _incomplete(label, f"no VAE encoder ({COND_AE}encoder.* or first_stage_model.encoder.*)")
    if f"{VISUAL}transformer.resblocks.0.attn.in_proj_weight" in keys:
        clip = "open_clip"
    elif f"{VISUAL}vision_model.embeddings.class_embedding" in keys:
        clip = "transformers"
    else:
        raise _incomplete(label, f"no CLIP image encoder ({VISUAL}*)")
    return Layout(decoder, encoder, clip)


def _incomplete(label: str, what: str) -> MarionetteError:
    return MarionetteError(
        f"{label} is an SVD single-file checkpoint with {what}.",
        "Download the file again: svd_xt.safetensors, svd_xt_1_1.safetensors or svd_xt_image_decoder.safetensors "
        "from Stability AI's Hugging Face pages, into ComfyUI's models/checkpoints.")


def unused_keys(keys: Iterable[str], layout: Layout) -> list[str]:
    """The file tensors no module uses (documented above), in file order."""
    prefixes = UNUSED_PREFIXES + (UNUSED_WITH_COND_ENCODER if layout.encoder == "conditioner" else ())
    return [k for k in keys if k in UNUSED_EXACT or k.startswith(prefixes)]


def conversion_rules(keys: Iterable[str], layout: Layout) -> list[Rule]:
    """Every rule for the three parts ("unet", "vae", "image_encoder") of a file with these keys."""
    keys = list(keys)
    return _unet_rules(keys) + _vae_rules(keys, layout) + _clip_rules(keys, layout)
