"""Models our nodes load for themselves (SD1.5 for DIFT, ArcFace R100, CMP, the Face Encoder, antelopev2),
held for reuse as ComfyUI ModelPatchers and released through ComfyUI's model management.

Each slot (one per model role) holds one model at a time, keyed by what it was made from: the file's
real path, modification time and size (every file of a folder), the dtype, ... A replaced file gives a
new key, so the next run reads it again; the old model is released first. ComfyUI moves the models to
the GPU and back like its own (`host.load_on_device`), and "Unload models" / "Free model and node cache"
(`comfy.model_management.unload_all_models`) empties every slot, so the memory is given back.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

import comfy.model_management as mm
import comfy.model_patcher

from .lowvram import make_castable

_SLOTS: dict[str, tuple[tuple, object]] = {}        # slot -> (key, ModelPatcher)
_RELEASE_HOOKS: list[Callable[[], None]] = []       # other caches emptied with the slots (body models)


def file_key(path: str | os.PathLike) -> tuple:
    """What a model file (or a diffusers folder) is, for cache keys: real path + modification time and
    size of the file, or of every file inside the folder."""
    path = os.path.realpath(os.fspath(path))
    if not os.path.isdir(path):
        stat = os.stat(path)
        return (path, stat.st_mtime_ns, stat.st_size)
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_mtime_ns, stat.st_size))
    return (path, tuple(sorted(entries)))


def files_key(*paths: str | os.PathLike | None) -> str:
    """A fingerprint of the model files (or folders) that exist among `paths`, for a loader's
    IS_CHANGED: ComfyUI runs the loader again when a file was replaced under the same name."""
    return repr(tuple(file_key(p) for p in paths if p and os.path.exists(p)))


def managed(module: nn.Module, size: int = 0, load_device: torch.device | None = None):
    """`module` as a ModelPatcher ComfyUI can load, partially load (its torch layers made castable,
    `lowvram.make_castable`) and offload."""
    make_castable(module)
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device or mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device(), size=size)


def cached(slot: str, key: tuple, build: Callable[[], nn.Module], size: int = 0,
           load_device: torch.device | None = None):
    """The ModelPatcher held in `slot` if it was made from `key`; else releases the slot and holds
    `managed(build())`."""
    held = _SLOTS.get(slot)
    if held is not None and held[0] == key:
        return held[1]
    release(slot)  # the old model goes before the new one is read, so both are never in memory
    patcher = managed(build(), size, load_device)
    _SLOTS[slot] = (key, patcher)
    return patcher


def held_key(slot: str) -> tuple | None:
    held = _SLOTS.get(slot)
    return None if held is None else held[0]


def patcher_for(module: nn.Module):
    """The held ModelPatcher of `module`, or a new one for a module from elsewhere."""
    for _, patcher in _SLOTS.values():
        if patcher.model is module:
            return patcher
    return managed(module)


def on_release(hook: Callable[[], None]) -> None:
    """Run `hook` (e.g. `some_dict.clear`) whenever ComfyUI unloads all models."""
    if hook not in _RELEASE_HOOKS:
        _RELEASE_HOOKS.append(hook)


def release(slot: str | None = None) -> None:
    """Drop one slot (or all, with the other registered caches): out of ComfyUI's loaded models, off the
    GPU, and no reference left here."""
    for name in list(_SLOTS) if slot is None else [slot]:
        held = _SLOTS.pop(name, None)
        if held is not None:
            _unload(held[1])
    if slot is None:
        for hook in _RELEASE_HOOKS:
            hook()


def _unload(patcher) -> None:
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher:
            mm.current_loaded_models.pop(index)
            loaded.model_unload()


def install_release_hook() -> None:
    """Make ComfyUI's `unload_all_models` (the /free route, "Unload models") also empty our caches.
    Wraps the module attribute once; both hosts look it up at call time."""
    original = mm.unload_all_models
    if getattr(original, "marionette_release", False):
        return

    def unload_all_models(*args, **kwargs):
        result = original(*args, **kwargs)
        release()
        return result

    unload_all_models.marionette_release = True
    unload_all_models.__wrapped__ = original
    mm.unload_all_models = unload_all_models


class SessionHolder(nn.Module):
    """Gives ComfyUI a handle on models that are not torch modules (onnxruntime sessions): its ModelPatcher
    (sized like the model files) makes ComfyUI clear room before they run on the GPU, and when ComfyUI
    moves it off the GPU (memory needed elsewhere, unload) GPU sessions are dropped, to be rebuilt on the
    next use. CPU sessions stay until the slot is released."""

    def __init__(self, build: Callable[[], object], on_gpu: bool):
        super().__init__()
        self._build, self.on_gpu, self.value = build, on_gpu, None

    def get(self):
        if self.value is None:
            self.value = self._build()
        return self.value

    def to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if self.on_gpu and device is not None and device.type == "cpu":
            self.value = None
        return super().to(*args, **kwargs)


install_release_hook()
