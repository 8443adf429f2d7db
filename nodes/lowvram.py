"""Partial (low-VRAM) loading of our torch models through ComfyUI's ModelPatcher.

When a model does not fit, ComfyUI loads it partially: layers that carry `comfy_cast_weights` (its own
`comfy.ops` classes) may stay in RAM and are cast to the compute device on every call; any other layer
it leaves wherever it is (0.3.x hosts), so a plain torch layer left in RAM meets its input on the GPU
and fails. Two steps make our diffusers/torch models work there:

* `make_castable` turns the plain torch layers of a model into ComfyUI's cast-capable classes, in place
  (same parameters; while fully loaded their forward is torch's own, so full loads are unchanged);
* `place_leftovers`, after each load, puts on the compute device what a partial load leaves behind and
  no layer casts: buffers, parameters of layers without a cast-capable class (BatchNorm, PReLU,
  diffusers' AlphaBlender, parameters held by container modules) and the first parameter of the top
  modules, from which the library reads a module's device (`next(module.parameters()).device`).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

import comfy.ops

_OPS = comfy.ops.disable_weight_init
_CASTABLE_NAMES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "GroupNorm",
                   "LayerNorm", "Embedding")  # the host's comfy.ops has a subset of these (2024: no Embedding)
CASTABLE = {getattr(nn, name): getattr(_OPS, name) for name in _CASTABLE_NAMES if hasattr(_OPS, name)}
ANCHOR_DEPTH = 2  # the root, its children and grandchildren keep their first parameter on the device


def make_castable(model: nn.Module) -> int:
    """Swap every plain torch layer of `model` that ComfyUI can cast for the host's comfy.ops class (exact
    types only, layers with weights only); returns how many were swapped. Idempotent."""
    swapped = 0
    for module in model.modules():
        target = CASTABLE.get(type(module))
        if target is None or getattr(module, "weight", None) is None:
            continue
        module.__class__ = target
        if not hasattr(module, "bias"):
            module.bias = None  # comfy.ops' Embedding reads `.bias` when it casts
        swapped += 1
    return swapped


def is_cast_on_use(module: nn.Module) -> bool:
    """True while ComfyUI has a layer cast its weights to the input's device on every call (low VRAM)."""
    return bool(getattr(module, "comfy_cast_weights", False))


def _anchors(model: nn.Module) -> set[int]:
    level, seen = [model], set()
    for _ in range(ANCHOR_DEPTH + 1):
        for module in level:
            first = next(itertools.islice(module.parameters(), 1), None)
            if first is not None:
                seen.add(id(first))
        level = [child for module in level for child in module.children()]
    return seen


def place_leftovers(model: nn.Module, device: torch.device | str) -> int:
    """After ComfyUI loaded `model` (fully or partially) for `device`: move there every tensor that would
    otherwise meet the model's inputs on the wrong device. Returns the bytes moved (0 after a full load)."""
    device = torch.device(device)
    anchors, moved = _anchors(model), 0
    with torch.no_grad():
        for module in model.modules():
            cast = is_cast_on_use(module)
            for name, parameter in list(module.named_parameters(recurse=False)):
                if parameter.device != device and (not cast or id(parameter) in anchors):
                    _move_parameter(module, name, parameter, device)
                    moved += parameter.numel() * parameter.element_size()
            for name, buffer in list(module.named_buffers(recurse=False)):
                if buffer is not None and buffer.device != device:
                    module._buffers[name] = buffer.to(device)
                    moved += buffer.numel() * buffer.element_size()
    return moved


def _move_parameter(module: nn.Module, name: str, parameter: nn.Parameter, device: torch.device) -> None:
    """As torch's Module.to does: swap the data in place where the tensor types allow it, else replace."""
    moved = parameter.data.to(device)
    if torch._has_compatible_shallow_copy_type(parameter, moved):
        parameter.data = moved
    else:
        module._parameters[name] = nn.Parameter(moved, requires_grad=parameter.requires_grad)


def off_device_tensors(model: nn.Module, device: torch.device | str) -> list[str]:
    """Names of parameters/buffers not on `device` that no layer casts on use: what would fail at run time
    (empty after `place_leftovers`). For checks and tests."""
    device = torch.device(device)
    names = []
    for prefix, module in model.named_modules():
        cast = is_cast_on_use(module)
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.device != device and not cast:
                names.append(f"{prefix}.{name}" if prefix else name)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.device != device:
                names.append(f"{prefix}.{name}" if prefix else name)
    return names
