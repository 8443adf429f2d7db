"""Marionette: pose-driven human image animation nodes for ComfyUI."""
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")  # headless rendering; read when a renderer is made

try:
    import folder_paths  # noqa: F401  (exists only inside ComfyUI)
except ModuleNotFoundError as e:
    if e.name != "folder_paths":
        raise
    # imported outside ComfyUI (pytest collecting the repository as a package): the library in
    # models/ stays usable, there are just no nodes to register
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
