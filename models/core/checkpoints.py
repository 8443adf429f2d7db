"""Reading checkpoint files safely: safetensors, or torch pickles through the weights-only unpickler.

Every loader in the library reads weights through here, so a file can never run code, and missing,
unknown, truncated or non-weight files are refused with a message that names the file.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping

import torch

from ..errors import MarionetteError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")  # .pth.tar: old training checkpoints


# ----------------------------------------------------------------------------------------- files
def checkpoint_suffix(path: str) -> str:
    """The file's kind ('.safetensors' or a torch suffix); a missing or unknown file is refused by name."""
    if not os.path.isfile(path):
        raise MarionetteError(f"Checkpoint not found: {path}.", "Check the file name and the folder it is in.")
    suffix = os.path.splitext(path)[1].lower()
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise MarionetteError(
            f"{os.path.basename(path)}: unsupported checkpoint type '{suffix or '(no extension)'}'.",
            "Use a .safetensors file or a PyTorch .pth/.pt/.bin/.ckpt/.pth.tar file.")
    return suffix


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file by name, on the CPU in their stored dtype.

    A top-level `state_dict` or `module` wrapper (training checkpoints) is unwrapped; anything that is
    not a mapping of names to tensors is refused with a `MarionetteError` naming the file."""
    path = os.fspath(path)
    suffix = checkpoint_suffix(path)
    content = _read_safetensors(path) if suffix == ".safetensors" else _read_torch(path)
    return _as_state_dict(_unwrap(content), os.path.basename(path))


class DictTensors:
    """A loaded state dict seen as a tensor source (see `open_checkpoint`)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self.state_dict = state_dict

    def keys(self) -> list[str]:
        return list(self.state_dict.keys())

    def get(self, name: str) -> torch.Tensor:
        return self.state_dict[name]

    def like(self, name: str) -> tuple[tuple[int, ...], torch.dtype, torch.device]:
        tensor = self.state_dict[name]
        return tuple(tensor.shape), tensor.dtype, tensor.device


class SafetensorsTensors:
    """A memory-mapped safetensors file: shapes from the header, tensors read one at a time."""

    def __init__(self, handle):
        self.handle = handle

    def keys(self) -> list[str]:
        return list(self.handle.keys())

    def get(self, name: str) -> torch.Tensor:
        return self.handle.get_tensor(name)

    def like(self, name: str) -> tuple[tuple[int, ...], torch.dtype, torch.device]:
        return tuple(self.handle.get_slice(name).get_shape()), torch.float32, torch.device("cpu")


@contextlib.contextmanager
def open_checkpoint(path: str | os.PathLike):
    """A checkpoint as a tensor source (`keys()`, `get(name)`, `like(name)`), not loaded whole where the
    format allows: safetensors are memory-mapped and read tensor by tensor, pickles go through the
    weights-only loader. Missing, unknown or truncated files are refused by name."""
    path = os.fspath(path)
    if checkpoint_suffix(path) != ".safetensors":
        yield DictTensors(load_state_dict_file(path))  # weights-only torch.load, memory-mapped for zip files
        return
    from safetensors import SafetensorError, safe_open
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _corrupt(path, error) from error
    with handle:
        yield SafetensorsTensors(handle)


def _read_safetensors(path: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _corrupt(path, error) from error


def _read_torch(path: str):
    try:
        with warnings.catch_warnings():  # plain pickles make torch warn about their protocol first
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # Zip archives can be memory-mapped, which keeps multi-GB files from being read twice.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            raise MarionetteError(
                f"{os.path.basename(path)} holds Python objects besides tensors ({refused.group(1)}), and "
                "Marionette only loads weights (torch.load with weights_only=True) so that a file cannot run "
                "code.",
                "Use the official release of this file, or convert it to .safetensors.") from error
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        reason = detail and f"the weights-only loader cannot read it ({detail.group(1)})"
        raise _corrupt(path, error, reason) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise _corrupt(path, error) from error


def _corrupt(path: str, error: Exception, reason: str | None = None) -> MarionetteError:
    reason = reason or next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return MarionetteError(
        f"{os.path.basename(path)} ({os.path.getsize(path):,} bytes) is truncated or not a checkpoint: "
        f"{reason[:160]}.",
        "Download the file again (an interrupted download leaves it truncated) and check its size against "
        "the one listed where you got it.")


def _unwrap(content):
    for _ in range(2):  # e.g. {"state_dict": ..., "optimizer": ...} or {"module": ...}
        if not isinstance(content, Mapping) or all(isinstance(v, torch.Tensor) for v in content.values()):
            break
        inner = next((content[k] for k in ("state_dict", "module") if isinstance(content.get(k), Mapping)), None)
        if inner is None:
            break
        content = inner
    return content


def _as_state_dict(content, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(content, Mapping):
        raise MarionetteError(f"{name} holds a {type(content).__name__}, not a dictionary of weights.",
                              "Pick a model checkpoint file.")
    others = [str(k) for k, v in content.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if others:
        raise MarionetteError(
            f"{name} holds {len(others)} entries that are not named tensors (e.g. {', '.join(others[:5])}).",
            "Pick a file with model weights only (a state dict).")
    if not content:
        raise MarionetteError(f"{name} holds no tensors.", "Pick a model checkpoint file.")
    return dict(content)
