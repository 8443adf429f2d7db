"""Run by ComfyUI-Manager and comfy-cli after installing the pack (`python install.py` in this folder).

Builds the Anny body model's data (1-3 minutes, ~50 MB kept) into ComfyUI/models/anny, where the nodes
read it (nodes/model_paths.py), so that the first Anny body fit does not wait for it. It never fails the
installation: without anny, or if the build fails, it says so and the nodes build the data on first use
(with a progress bar and Cancel). Set MARIONETTE_SKIP_ANNY_BUILD=1 to skip it.
"""
import importlib.util
import os
import sys

PACK_DIR = os.path.dirname(os.path.abspath(__file__))


def say(line: str) -> None:
    print(f"[Marionette install] {line}", flush=True)


def anny_cache_dir() -> str | None:
    """ANNY_CACHE_DIR if set; else <ComfyUI>/models/anny when this pack sits in <ComfyUI>/custom_nodes/."""
    if os.environ.get("ANNY_CACHE_DIR"):
        return os.environ["ANNY_CACHE_DIR"]
    custom_nodes = os.path.dirname(PACK_DIR)
    if os.path.basename(custom_nodes) != "custom_nodes":
        return None
    return os.path.join(os.path.dirname(custom_nodes), "models", "anny")


def load_library():
    """The pack's `models` package under a private name (this folder's own name is not importable)."""
    spec = importlib.util.spec_from_file_location("marionette_install_models", os.path.join(PACK_DIR, "models", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(PACK_DIR, "models")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{spec.name}.body.anny_data")


class Percent:
    """Prints the build's progress every 10 %."""

    def __init__(self):
        self.shown = -10

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total
        if percent >= self.shown + 10:
            self.shown = percent - percent % 10
            say(f"Anny model data: {self.shown}%")


def main() -> None:
    if os.environ.get("MARIONETTE_SKIP_ANNY_BUILD") == "1":
        say("MARIONETTE_SKIP_ANNY_BUILD=1: the Anny model data will be built on first use.")
        return
    cache = anny_cache_dir()
    if cache is None:
        say(f"{PACK_DIR} is not inside ComfyUI/custom_nodes and ANNY_CACHE_DIR is not set: "
            "the Anny model data will be built on first use.")
        return
    try:
        anny_data = load_library()
        if anny_data.build_anny_data(cache, on_progress=Percent(), log=say) == "ready":
            say(f"Anny model data: already built in {cache}.")
    except Exception as e:  # an install must never fail on this optional step
        say(f"Anny model data not built ({e}). It will be built on first use of an Anny body node.")


if __name__ == "__main__":
    main()
