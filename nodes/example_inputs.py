"""The example inputs the shipped workflows open with (workflows/inputs/: a reference photo and a driving
clip rendered from the free Anny body model), copied into ComfyUI's input folder where they are missing."""
from __future__ import annotations

import logging
import os
import shutil

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DIR = os.path.join(PACK_DIR, "workflows", "inputs")


def example_files() -> list[str]:
    if not os.path.isdir(EXAMPLE_DIR):
        return []
    return sorted(f for f in os.listdir(EXAMPLE_DIR) if os.path.isfile(os.path.join(EXAMPLE_DIR, f)))


def install_example_inputs(input_dir: str | None = None) -> list[str]:
    """Copies every example input that `input_dir` (ComfyUI's input folder by default) lacks and returns
    their names; a file already there under the same name (the user's own) is never replaced."""
    if input_dir is None:
        import folder_paths
        input_dir = folder_paths.get_input_directory()
    copied = []
    for name in example_files():
        target = os.path.join(input_dir, name)
        if os.path.exists(target):
            continue
        os.makedirs(input_dir, exist_ok=True)
        partial = f"{target}.{os.getpid()}.part"  # a half-copied file is never seen under the real name
        shutil.copyfile(os.path.join(EXAMPLE_DIR, name), partial)
        os.replace(partial, target)
        copied.append(name)
    return copied


def ensure_example_inputs() -> None:
    """At pack import: the workflows' inputs in place, or a warning that says how to put them there."""
    try:
        install_example_inputs()
    except OSError as e:
        logging.warning("Marionette: could not copy the example inputs into ComfyUI's input folder (%s); "
                        "copy the files of %s there to open the shipped workflows as they are.", e, EXAMPLE_DIR)
