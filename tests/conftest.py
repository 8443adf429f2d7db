"""Test setup: the library is importable as `marionette.*` without ComfyUI.

The repository root is a ComfyUI custom-node package whose `__init__` imports ComfyUI, so the
tests register the root as a bare package named `marionette` instead of executing that file.
"""
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

ROOT = Path(__file__).resolve().parents[1]
if "marionette" not in sys.modules:
    pkg = types.ModuleType("marionette")
    pkg.__path__ = [str(ROOT)]
    sys.modules["marionette"] = pkg
