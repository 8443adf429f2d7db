"""Marionette: pose-driven human image animation nodes for ComfyUI."""
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # headless rendering; read when a renderer is made

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
