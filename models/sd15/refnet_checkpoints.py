"""The released files of the SD1.5 ReferenceNet family, recognised by their keys and loaded key-exact.

Champ (HF fudan-generative-ai/champ, folder `champ/`) and Moore-AnimateAnyone (HF patrolli/AnimateAnyone)
release the same three backbone files — `denoising_unet.pth` (686 tensors, the SD1.5 UNet in diffusers
naming), `reference_unet.pth` (682: the same without `conv_norm_out`/`conv_out`), `motion_module.pth`
(588: 21 AnimateDiff-v2 modules incl. the mid block and their `pe` buffers) — plus their conditioning:
Moore's `pose_guider.pth` (a PoseGuider, conv layers only) or Champ's
`guidance_encoder_{depth,normal,semantic_map,dwpose}.pth` (the same convs plus `attentions.*`).

Other projects (MusePose, AniPortrait, EchoMimic, ...) reuse these file names with other contents, so a
file is recognised only by its tensor names (`classify_keys`) and then checked name by name and shape by
shape against the module it fills: every missing, unexpected or mis-shaped tensor is counted and named.
Files are read by `core.checkpoints` (safetensors, or torch pickles through the weights-only unpickler).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from ..core.checkpoints import open_checkpoint
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError
from .refnet_unet import (DenoisingUNet3D, ReferenceUNet, build_denoising_unet, build_reference_unet,
                          split_denoising_state)

CHAMP_SOURCE = "Hugging Face 'fudan-generative-ai/champ' (folder champ/)"
MOORE_SOURCE = "Hugging Face 'patrolli/AnimateAnyone'"
SHOWN_NAMES = 12  # a mismatch message names this many tensors and summarises the rest by prefix
SMALL_EXTRA_ELEMENTS = 1024  # see champ.loading: what an ignorable unknown tensor may hold at most
LOG = logging.getLogger("marionette")


class Kind(NamedTuple):
    summary: str  # what a file of this kind is, for messages
    files: str  # the released files of this kind


KINDS: dict[str, Kind] = {
    "denoising_unet": Kind("the denoising UNet (the SD1.5 UNet in diffusers naming, with conv_out)",
                           f"denoising_unet.pth ({CHAMP_SOURCE} or {MOORE_SOURCE})"),
    "reference_unet": Kind("the reference UNet (the SD1.5 UNet without conv_norm_out/conv_out)",
                           f"reference_unet.pth ({CHAMP_SOURCE} or {MOORE_SOURCE})"),
    "motion_module": Kind("the motion modules (AnimateDiff v2 with the mid block)",
                          f"motion_module.pth ({CHAMP_SOURCE} or {MOORE_SOURCE})"),
    "pose_guider": Kind("Moore-AnimateAnyone's PoseGuider (conv layers only)", f"pose_guider.pth ({MOORE_SOURCE})"),
    "guidance_encoder": Kind("a Champ guidance encoder (convs + attentions)",
                             f"guidance_encoder_depth.pth / _normal / _semantic_map / _dwpose.pth ({CHAMP_SOURCE})"),
}
FAMILY_OF_CONDITIONING = {"pose_guider": "animate_anyone", "guidance_encoder": "champ"}
UNET_PREFIXES = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.", "up_blocks.", "conv_norm_out.",
                 "conv_out.")
CONV_STACK_PREFIXES = ("conv_in.", "blocks.", "conv_out.")


# ---------------------------------------------------------------------------------------- recognising
def classify_keys(keys: Iterable[str]) -> str:
    """Which kind of file (a key of KINDS) these tensor names are; anything else is an error saying what
    the file looks like."""
    keys = list(keys)
    motion = [k for k in keys if ".motion_modules." in k]
    if motion and len(motion) == len(keys):
        return "motion_module"
    if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys):
        if motion:
            raise _wrong(keys, "a UNet with the motion modules merged in (a re-packed or derivative release)",
                         "Use the official separate files: denoising_unet.pth and motion_module.pth.")
        if not all(k.startswith(UNET_PREFIXES) for k in keys):
            raise _unknown(keys)
        return "denoising_unet" if "conv_out.weight" in keys else "reference_unet"
    if keys and all(k.startswith(CONV_STACK_PREFIXES) for k in keys):
        return "pose_guider"
    if any(k.startswith("attentions.") for k in keys) and all(
            k.startswith(CONV_STACK_PREFIXES + ("attentions.", "guidance_attention.")) for k in keys):
        return "guidance_encoder"
    raise _unknown(keys)


def family_of(path: str | os.PathLike) -> str:
    """'champ' or 'animate_anyone' from a conditioning file's tensor names (never from its name)."""
    with open_checkpoint(path) as source:
        kind = classify_keys(source.keys())
    if kind not in FAMILY_OF_CONDITIONING:
        raise MarionetteError(f"{os.path.basename(os.fspath(path))} is {KINDS[kind].summary}, not a pose guider or "
                              "guidance encoder, so it does not tell Champ from Animate Anyone.",
                              f"Pick {KINDS['pose_guider'].files} or {KINDS['guidance_encoder'].files}.")
    return FAMILY_OF_CONDITIONING[kind]


def _unknown(keys: list[str]) -> MarionetteError:
    prefixes = _prefix_counts(keys)
    hint = ""
    if any(k.startswith("model.diffusion_model.") for k in keys):
        hint = " It is a single-file Stable Diffusion checkpoint; these models need their own released files."
    elif any(k.startswith("vision_model.") for k in keys):
        hint = " It is a CLIP vision encoder (the image_encoder input)."
    elif any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        hint = " It is a VAE."
    elif any(k.startswith("blocks.") for k in keys) and any(k.startswith("conv_in.") for k in keys):
        others = sorted({k.split(".", 1)[0] for k in keys if not k.startswith(CONV_STACK_PREFIXES)})
        hint = (f" It is another project's pose guider: the PoseGuider convs plus {', '.join(others[:4])} "
                "(e.g. AniPortrait's has cross_attn1-4).")
    return MarionetteError(
        f"This file is not one of the Champ / Moore-AnimateAnyone files: {len(keys)} tensors, name prefixes "
        f"{prefixes}; first names {', '.join(keys[:3])}.{hint}",
        "Expected one of: " + "; ".join(kind.files for kind in KINDS.values()) + ".")


def _wrong(keys: list[str], what: str, fix: str) -> MarionetteError:
    return MarionetteError(f"This file holds {what}: {len(keys)} tensors, name prefixes {_prefix_counts(keys)}.", fix)


def _prefix_counts(keys: list[str]) -> str:
    counts: dict[str, int] = {}
    for key in keys:
        head = key.split(".", 1)[0]
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"{p} ({n})" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])


# ------------------------------------------------------------------------------------ exact checking
def layout_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Tensor names -> shapes of a module's state dict (cheap on a meta-built module)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_layout(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], what: str,
                 label: str, fix: str, optional: Mapping[str, tuple[int, ...]] | None = None,
                 small_extras: int = 0) -> list[str]:
    """Refuse `found` unless it has exactly `expected`'s names and shapes; `optional` names may be there
    all together with their shapes (then they are ignored) or not at all. Up to `small_extras` further
    tensors of at most SMALL_EXTRA_ELEMENTS elements each, outside the module's own submodules, are ignored
    when everything expected is there (returned, to be reported). The error's `missing`, `unexpected` and
    `misshaped` attributes hold every offending name."""
    optional = dict(optional or {})
    own = {k.split(".", 1)[0] for k in [*expected, *optional]}  # the module's own submodules
    present_optional = [k for k in optional if k in found]
    if present_optional and len(present_optional) != len(optional):
        optional = {}  # a partial set is as unexplained as any other extra tensor
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected and k not in optional]
    misshaped = [f"{k} {list(found[k])} (expected {list(shape)})"
                 for k, shape in {**expected, **optional}.items() if k in found and tuple(found[k]) != tuple(shape)]
    if (not missing and not misshaped and len(unexpected) <= small_extras
            and all(math.prod(found[k]) <= SMALL_EXTRA_ELEMENTS and k.split(".", 1)[0] not in own for k in unexpected)):
        return unexpected
    parts = [f"{len(names)} {word}: {_named(names)}" for word, names in
             (("missing", missing), ("unexpected", unexpected), ("with another shape", misshaped)) if names]
    error = MarionetteError(f"{label} does not hold exactly the {len(expected)} tensors of {what} "
                            f"(it has {len(found)}); {'; '.join(parts)}.", fix)
    # the message names the first SHOWN_NAMES of each list; the complete lists travel with the error (logs)
    error.missing, error.unexpected, error.misshaped = missing, unexpected, misshaped
    raise error


def _named(names: list[str]) -> str:
    if len(names) <= SHOWN_NAMES:
        return ", ".join(names)
    rest = names[SHOWN_NAMES:]
    return f"{', '.join(names[:SHOWN_NAMES])} and {len(rest)} more ({_prefix_counts(rest)})"


def read_exact(path: str | os.PathLike, kind: str, expected: Mapping[str, tuple[int, ...]], what: str,
               fix: str, dtype: torch.dtype | None,
               optional: Mapping[str, tuple[int, ...]] | None = None,
               small_extras: int = 0) -> dict[str, torch.Tensor]:
    """The tensors of `path` after checking it is a file of `kind` holding exactly `expected` (names and
    shapes; `optional` and `small_extras` see `check_layout`; ignored extras are logged), cast one by one
    to `dtype` (None: as stored)."""
    path = os.fspath(path)
    label = os.path.basename(path)
    with open_checkpoint(path) as source:
        keys = source.keys()
        own = {k.split(".", 1)[0] for k in [*expected, *(optional or {})]}
        tolerable = [k for k in keys if small_extras and k.split(".", 1)[0] not in own
                     and math.prod(source.like(k)[0]) <= SMALL_EXTRA_ELEMENTS]
        usable = [k for k in keys if k not in tolerable]
        if len(tolerable) > small_extras or not set(expected) <= set(usable):
            usable = keys  # not a complete file with a few tiny extras: judge it whole
        try:  # what the file is, told by the tensors a loader could use (not the tolerated tiny extras)
            found_kind = classify_keys(usable)
        except MarionetteError as error:
            raise MarionetteError(f"{label}: {error.problem}", f"{fix} {error.fix}") from error
        if found_kind != kind:
            raise MarionetteError(f"{label} is {KINDS[found_kind].summary}, not {KINDS[kind].summary}.",
                                  f"{fix} This file belongs where {KINDS[found_kind].files} goes.")
        ignored = check_layout({k: source.like(k)[0] for k in keys}, expected, what, label, fix, optional,
                               small_extras)
        if ignored:
            LOG.warning("%s: ignoring %d small tensors that %s does not have: %s", label, len(ignored), what,
                        ", ".join(ignored))
        tensors = {}
        for name in expected:
            tensor = source.get(name)
            tensors[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return tensors


def load_module(build: Callable[[], nn.Module], path: str | os.PathLike, kind: str, what: str, fix: str,
                dtype: torch.dtype, optional: Mapping[str, tuple[int, ...]] | None = None,
                small_extras: int = 0) -> nn.Module:
    """`build()` on the meta device, filled strictly from `path` (a file of `kind`), in `dtype`, eval mode."""
    with torch.device("meta"):
        module = build()
    tensors = read_exact(path, kind, layout_of(module), what, fix, dtype, optional, small_extras)
    return strict_fill(module, tensors, what, os.path.basename(os.fspath(path)), fix, dtype)


# --------------------------------------------------------------------------------------- the backbone
@dataclass
class RefNetBackbone:
    """The loaded UNets of one model (CPU, `dtype`, eval mode, no gradients)."""
    denoising_unet: DenoisingUNet3D
    reference_unet: ReferenceUNet
    dtype: torch.dtype
    files: dict[str, str] = field(default_factory=dict)


BACKBONE_FIX = ("Use the released denoising_unet.pth, reference_unet.pth and motion_module.pth of one model "
                f"({CHAMP_SOURCE}, or {MOORE_SOURCE}), each in its own slot.")


def load_backbone(denoising_unet: str | os.PathLike, reference_unet: str | os.PathLike,
                  motion_module: str | os.PathLike, dtype: torch.dtype = torch.float16,
                  config: dict | None = None, motion: dict | None = None) -> RefNetBackbone:
    """The denoising UNet3D (`denoising_unet` + `motion_module` files) and the reference UNet, key-exact.
    `config`/`motion` default to the released ones (tests pass tiny ones)."""
    dtype = check_dtype(dtype, "SD1.5 ReferenceNet models")
    with torch.device("meta"):
        denoiser = build_denoising_unet(config, motion)
    spatial, temporal = split_denoising_state(layout_of(denoiser))
    tensors = read_exact(denoising_unet, "denoising_unet", spatial, "the denoising UNet", BACKBONE_FIX, dtype)
    tensors.update(read_exact(motion_module, "motion_module", temporal, "the motion modules", BACKBONE_FIX, dtype))
    source = f"{os.path.basename(os.fspath(denoising_unet))} + {os.path.basename(os.fspath(motion_module))}"
    denoiser = strict_fill(denoiser, tensors, "denoising UNet3D", source, BACKBONE_FIX, dtype)
    del tensors
    reference = load_module(lambda: build_reference_unet(config), reference_unet, "reference_unet",
                            "the reference UNet", BACKBONE_FIX, dtype)
    files = {"denoising_unet": os.fspath(denoising_unet), "reference_unet": os.fspath(reference_unet),
             "motion_module": os.fspath(motion_module)}
    return RefNetBackbone(denoiser, reference, dtype, files)
