"""Filling modules built on the meta device from a state dict, strictly, with errors that name the file."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import MarionetteError


def strict_fill(module: nn.Module, state_dict: Mapping[str, torch.Tensor], label: str, source: str, fix: str,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Load `state_dict` into `module` (strict, `assign=True`, so meta-built modules take the tensors as
    they are), materialise its non-persistent buffers, and return it in eval mode without gradients (in
    `dtype` when given). A mismatch raises a `MarionetteError` naming `source`, the `label` and the first
    missing / unexpected / mis-shaped tensors, with `fix` as the remedy."""
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise MarionetteError(f"{source} does not fit the {label}: {' '.join(lines[:4])[:600]}", fix) from error
    materialise_buffers(module, label)
    return finish(module, dtype)


def materialise_buffers(module: nn.Module, label: str) -> None:
    """Non-persistent buffers are not in the weight file, so a meta-built module still lacks them after
    loading. The only one these models have is CLIP's `position_ids` (0..n-1)."""
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        owner_name, _, attribute = name.rpartition(".")
        if attribute != "position_ids":
            raise MarionetteError(f"The {label} has a buffer '{name}' that no weight file provides.",
                                  "Install the transformers/diffusers versions from requirements.txt.")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner.register_buffer(attribute, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)


def finish(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Inference mode for a loaded module: eval, no gradients, optionally cast."""
    if dtype is not None:
        # plain nn.Module.to: diffusers' override warns about fp32-only modules, which these models do not have
        module = nn.Module.to(module, dtype=dtype)
    return module.eval().requires_grad_(False)
