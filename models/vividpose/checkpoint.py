"""VividPose checkpoints: one safetensors file, every tensor of the model by its module name, and the
architecture (`VividPoseConfig`) as JSON in the file's metadata. Loading rebuilds exactly that
architecture (pose injection point, identity tokens, ...) and fills it strictly; a file that does not fit
is refused with the names of the missing, unexpected and mis-shaped tensors.

A file may also bundle the VAE and image encoder the model was trained with ("companions", under the
prefixes `vae.` / `image_encoder.`, their classes and configs in the metadata): a model trained without
SVD's VAE and CLIP (e.g. the small one trained here) then runs on its own."""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..core.checkpoints import checkpoint_suffix
from ..core.dtypes import check_dtype
from ..core.modules import strict_fill
from ..errors import MarionetteError
from .config import FORMAT, FORMAT_VERSION, VividPoseConfig
from .model import VividPose, build_vividpose

FIX = "Use a checkpoint written by Marionette's VividPose trainer (save_vividpose)."
SHOWN = 6  # names listed per kind of mismatch
COMPANION_CLASSES = {"vae": ("AutoencoderKLTemporalDecoder", "PatchLatent"),
                     "image_encoder": ("CLIPVisionModelWithProjection",)}


def companion_spec(module: nn.Module) -> dict:
    """{'class', 'config'} of a bundled diffusers VAE or transformers image encoder."""
    config = module.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {"class": type(module).__name__, "config": json.loads(json.dumps(config, default=str))}


def build_companion(name: str, spec: dict) -> nn.Module:
    """The (random) module a companion spec describes."""
    if spec.get("class") not in COMPANION_CLASSES.get(name, ()):
        raise MarionetteError(f"Unknown bundled {name} class {spec.get('class')!r}.", FIX)
    if spec["class"] == "PatchLatent":
        from .patch_latent import PatchLatent
        return PatchLatent.from_config(spec["config"])
    if name == "vae":
        from diffusers import AutoencoderKLTemporalDecoder
        return AutoencoderKLTemporalDecoder.from_config(spec["config"])
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**spec["config"]))


def fill_companion(module: nn.Module, state: dict, label: str, path: str, fix: str,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """`strict_fill`, then the module's own check of what it was filled with (the patch latent's patterns)."""
    module = strict_fill(module, state, label, path, fix, dtype)
    if hasattr(module, "check_basis"):
        module.check_basis(os.path.basename(path))
    return module


def save_vividpose(model: VividPose, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                   companions: dict[str, nn.Module] | None = None, dtype: torch.dtype | None = None) -> None:
    """Write `model` (its state dict, contiguous; in `dtype` if given) with its config in the metadata;
    `metadata` adds string entries (e.g. the training command); `companions` bundles a 'vae' and/or
    'image_encoder'."""
    from safetensors.torch import save_file
    state = {k: v.detach() for k, v in model.state_dict().items()}
    specs = {}
    for name, module in (companions or {}).items():
        specs[name] = companion_spec(module)
        with torch.device("meta"):
            build_companion(name, specs[name])  # refuses classes the loader would not rebuild
        state.update({f"{name}.{k}": v.detach() for k, v in module.state_dict().items()})
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    info = dict(metadata or {})
    info.update(format=FORMAT, format_version=str(FORMAT_VERSION), config=model.config.to_json())
    if specs:
        info["companions"] = json.dumps(specs, sort_keys=True)
    save_file(state, os.fspath(path), metadata=info)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a VividPose checkpoint (refused by name if the file is not one)."""
    from safetensors import SafetensorError, safe_open
    path = os.fspath(path)
    name = os.path.basename(path)
    if checkpoint_suffix(path) != ".safetensors":
        raise MarionetteError(f"{name}: VividPose checkpoints are .safetensors files (the architecture travels "
                              "in their metadata).", FIX)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise MarionetteError(f"{name} is truncated or not a safetensors file ({str(error)[:120]}).",
                              "Copy the file again and check its size.") from error
    if metadata.get("format") != FORMAT:
        raise MarionetteError(f"{name} is not a VividPose checkpoint (its metadata has format "
                              f"{metadata.get('format')!r}, expected {FORMAT!r}).", FIX)
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise MarionetteError(f"{name} has VividPose format version {metadata.get('format_version')!r}; this "
                              f"Marionette reads version {FORMAT_VERSION}.", "Update the pack (or the file).")
    return metadata


def check_keys(expected: dict[str, tuple], found: dict[str, tuple], source: str,
               label: str = "the VividPose model its metadata describes", fix: str = FIX) -> None:
    """Refuse, by name, tensors that are missing, unexpected or shaped otherwise ({name: shape} each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if not (missing or unexpected or shapes):
        return
    parts = []
    for kind, names in (("missing", missing), ("unexpected", unexpected)):
        if names:
            more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
            parts.append(f"{len(names)} {kind}: {', '.join(names[:SHOWN])}{more}")
    if shapes:
        parts.append(f"{len(shapes)} of another shape: " + ", ".join(
            f"{k} {tuple(found[k])} (model {tuple(expected[k])})" for k in shapes[:SHOWN]))
    raise MarionetteError(f"{source} does not fit {label}: {'; '.join(parts)}.", fix)


def load_vividpose(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> VividPose:
    """The model of a checkpoint: built from its metadata's config, filled strictly, eval, in `dtype`."""
    from safetensors import safe_open
    path = os.fspath(path)
    dtype = check_dtype(dtype, "VividPose model")
    config = VividPoseConfig.from_json(read_metadata(path)["config"], os.path.basename(path))
    with torch.device("meta"):
        model = build_vividpose(config)
    bundled = tuple(f"{name}." for name in companion_specs(path))
    with safe_open(path, framework="pt", device="cpu") as handle:
        keys = [k for k in handle.keys() if not k.startswith(bundled)] if bundled else list(handle.keys())
        found = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
        check_keys({k: tuple(v.shape) for k, v in model.state_dict().items()}, found, os.path.basename(path))
        state = {k: handle.get_tensor(k) for k in keys}
    return strict_fill(model, state, "VividPose model", path, FIX, dtype)


def companion_specs(path: str | os.PathLike) -> dict[str, dict]:
    """The bundled modules' specs of a checkpoint ({} when it bundles none)."""
    text = read_metadata(path).get("companions")
    return json.loads(text) if text else {}


def load_companions(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
    """The VAE / image encoder a checkpoint bundles, built from their specs and filled strictly, eval."""
    from safetensors import safe_open
    path = os.fspath(path)
    out = {}
    with safe_open(path, framework="pt", device="cpu") as handle:
        for name, spec in companion_specs(path).items():
            with torch.device("meta"):
                module = build_companion(name, spec)
            prefix = f"{name}."
            keys = [k for k in handle.keys() if k.startswith(prefix)]
            found = {k[len(prefix):]: tuple(handle.get_slice(k).get_shape()) for k in keys}
            check_keys({k: tuple(v.shape) for k, v in module.state_dict().items()}, found,
                       os.path.basename(path), f"its bundled {name}")
            state = {k[len(prefix):]: handle.get_tensor(k) for k in keys}
            out[name] = fill_companion(module, state, f"bundled {name}", path, FIX, dtype)
    return out
