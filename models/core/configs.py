"""Reading the JSON configs that ship with diffusers folders."""
from __future__ import annotations

import json
import os

from ..errors import MarionetteError


def read_json(path: str, missing: str, fix: str) -> dict:
    """A JSON object from `path`; `missing` is the message when the file is absent, `fix` the remedy."""
    if not os.path.isfile(path):
        raise MarionetteError(missing, fix)
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MarionetteError(f"{path} is not readable JSON ({error}).", f"Download the file again. {fix}") from error
    if not isinstance(content, dict):
        raise MarionetteError(f"{path} does not hold a JSON object.", f"Download the file again. {fix}")
    return content


def without_meta(config: dict) -> dict:
    """A diffusers config without its bookkeeping entries (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
