"""Test setup: the library is importable as `marionette.*` without ComfyUI (see tests/harness),
and fixtures for the real-host tiers.
"""
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("MARIONETTE_TEST_MODELS", "1")  # the tiny test models are combo choices (nodes/tiny_models.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/harness importable as `harness`
from harness import ROOT  # noqa: E402,F401  (also registers the `marionette` library alias)
from harness.media import write_media  # noqa: E402,F401


def need_env(name: str) -> str:
    """Host tiers need what .ci/setup.sh builds; outside CI they are skipped with the reason."""
    value = os.environ.get(name)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not set: run the tests through `bash .ci/test`")
        pytest.skip(f"{name} is not set: run the tests through `bash .ci/test`")
    return value


def comfy_model_code() -> str:
    """Makes ComfyUI's own model code importable in this process (CPU, no argument parsing, nothing
    started), for tests that compare our modules with ComfyUI's; returns the ComfyUI folder."""
    comfy_dir = need_env("MARIONETTE_COMFY")
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args
    args.cpu = True
    return comfy_dir


@pytest.fixture(scope="session")
def comfy_host():
    need_env("MARIONETTE_COMFY")
    from harness.comfy_host import ComfyHost
    return ComfyHost.get()


@pytest.fixture(scope="session")
def synthetic():
    """A synthetic reference photo and a driving clip (Anny renders with ground-truth joints)."""
    from marionette.models.synthetic.clip import render_driving_clip, render_reference
    return {"reference": render_reference(width=384, height=576, seed=1),
            "driving": render_driving_clip(frames=8, width=384, height=384, seed=2)}


@pytest.fixture(scope="session")
def synthetic_media(comfy_host, synthetic):
    """The synthetic media written into the in-process host's input folder."""
    return write_media(comfy_host.input_dir, synthetic)


@pytest.fixture(scope="session")
def comfy_server():
    """The real ComfyUI server (main.py --cpu) with Marionette installed, for HTTP and browser tests."""
    need_env("MARIONETTE_COMFY")
    from harness.server import ComfyServer
    with ComfyServer() as server:
        yield server


@pytest.fixture(scope="session")
def artifacts_dir():
    path = os.environ.get("MARIONETTE_ARTIFACTS") or str(ROOT / "test-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


TIERS = {"host": 1, "test_workflows.py": 1, "test_server.py": 2, "test_server_animation.py": 2, "test_browser.py": 3,
         "test_browser_combos.py": 3}


def pytest_collection_modifyitems(items):
    """Runs the tiers in order: library units, in-process host, server, browser (the browser's event
    loop must not precede in-process host runs)."""
    def tier(item):
        name = item.path.name
        return TIERS.get(name, TIERS["host"] if name.startswith("test_host") else 0)
    items.sort(key=tier)
