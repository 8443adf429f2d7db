"""Drives a real ComfyUI (in-process executor, HTTP server, browser frontend) for tests and the demo.

Importing it also makes the library importable as `marionette.*` without ComfyUI: the repository
root is a custom-node package whose `__init__` imports ComfyUI, so the root is registered as a bare
package instead of executing that file.
"""
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEDIAPIPE = ROOT / "models" / "mediapipe"  # the bundled embedded-default models
if "marionette" not in sys.modules:
    _pkg = types.ModuleType("marionette")
    _pkg.__path__ = [str(ROOT)]
    sys.modules["marionette"] = _pkg
