"""The untrained tiny models are for tests and the demo only: they are combo choices when
MARIONETTE_TEST_MODELS=1 is set, never in a user's UI (a workflow a user opens names the real files)."""
from __future__ import annotations

import os

TINY_MODELS_ENV = "MARIONETTE_TEST_MODELS"


def tiny_models_enabled() -> bool:
    return os.environ.get(TINY_MODELS_ENV, "").strip().lower() in ("1", "true", "yes")


def tiny_choices(*choices: str) -> list[str]:
    """`choices` (the tiny models' combo values) when the test models are enabled, else none."""
    return list(choices) if tiny_models_enabled() else []
