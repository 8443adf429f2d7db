"""Building a body model by kind ("anny" or "smplx"), once per process (the kinds import `model`, so the
factory lives apart from it)."""
from __future__ import annotations

import threading

from ..errors import MarionetteError
from .model import KINDS, BodyModel, check_gender

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def load_body_model(kind: str, model_dir: str | None = None, gender: str = "neutral") -> BodyModel:
    """The body model of `kind` ("anny" or "smplx"), built once per process and then reused.

    SMPL-X reads `SMPLX_{GENDER}.npz` (or `.pkl`) from `model_dir`; Anny needs no files (its data ships
    with the `anny` package) and takes `gender` only as a label — its shape vector holds the gender.
    """
    kind_key = str(kind).strip().lower().replace("-", "").replace("_", "")
    gender = check_gender(gender)
    if kind_key == "anny":
        from .anny_model import AnnyBody
        key = ("anny", gender)
        build = lambda: AnnyBody(gender)  # noqa: E731
    elif kind_key == "smplx":
        from .smplx_model import SMPLXBody, find_model_file
        path = find_model_file(model_dir, gender)
        key = ("smplx", str(path), path.stat().st_mtime_ns)
        build = lambda: SMPLXBody(path, gender)  # noqa: E731
    else:
        raise MarionetteError(f"Unknown body model {kind!r}.", f"Use one of: {', '.join(KINDS)}.")
    with _CACHE_LOCK:
        if key not in _CACHE:
            for stale in [k for k in _CACHE if k[:2] == key[:2]]:  # the same file before it was replaced
                del _CACHE[stale]
            _CACHE[key] = build()
        return _CACHE[key]


def release_body_models() -> None:
    """Forget every built body model (a host freeing memory); the next use builds it again."""
    with _CACHE_LOCK:
        _CACHE.clear()
