"""Tier 2: Anny's first use inside the real host. SMPLXFit builds the missing data with its progress bar
moving and stops at once on Cancel (no partial files, the queue free again); with the data present it
only checks it and fits."""
import importlib
import shutil
import sys
import time
from pathlib import Path

import pytest

from test_host_body import driving_prompt, fit_node

STEPS = 1000   # anny_data.STEPS: the build's progress total


@pytest.fixture
def fresh_anny(comfy_host, tmp_path, monkeypatch):
    """The host's anny reads an empty cache folder, and no Anny model is loaded yet in the host."""
    import anny.paths
    fit_module = sys.modules[comfy_host.node_class("SMPLXFit").__module__]
    package = fit_module.__name__.rsplit(".nodes.", 1)[0]
    monkeypatch.setattr(fit_module, "_models", {})
    monkeypatch.setattr(importlib.import_module(f"{package}.models.body.loading"), "_CACHE", {})
    monkeypatch.setattr(importlib.import_module(f"{package}.models.body.anny_model"), "_CORE", [])
    old = anny.paths.get_anny_cache_path()
    cache = tmp_path / "anny"
    anny.paths.set_anny_cache_path(cache)
    yield cache
    anny.paths.set_anny_cache_path(old)


def fit_prompt(media):
    prompt = driving_prompt(media)
    prompt["4"] = fit_node(["3", 0], ["2", 0], iterations=10)
    prompt["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}}
    return prompt


def test_cancel_stops_the_first_use_build(comfy_host, synthetic_media, fresh_anny, monkeypatch):
    import comfy.model_management as mm
    from server import PromptServer
    seen, cancelled, texts = [], [], []
    monkeypatch.setattr(PromptServer.instance, "send_progress_text",
                        lambda text, node_id, sid=None: texts.append((node_id, text)), raising=False)

    def hook(value, total, preview, node_id=None):
        if total == STEPS:
            seen.append(value)
            if value > 0 and not cancelled:       # the build is reading anny's targets: the user cancels
                cancelled.append(time.monotonic())
                mm.interrupt_current_processing(True)

    result = comfy_host.run_with_progress_hook(fit_prompt(synthetic_media), hook)
    latency = time.monotonic() - cancelled[0]
    assert not result.success and "execution_interrupted" in [kind for kind, _ in result.messages]
    assert latency < 3.0, f"the queue stayed blocked {latency:.1f} s after Cancel"
    assert seen[0] == 0 and 0 < max(seen) < STEPS
    if hasattr(type(PromptServer.instance), "send_progress_text"):   # hosts with node status lines
        assert ("4", "Building the Anny body model data (first use only): 0%") in texts
    files = [p.name for p in Path(fresh_anny).rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".safetensors", ".partial", ".json"))], files


def test_first_use_with_the_data_present_only_checks_it(comfy_host, synthetic_media, fresh_anny):
    built = sorted(Path(comfy_host_cache()).glob("v*/build_compact_model_data_*.safetensors"))
    if not built:
        pytest.skip("ANNY_CACHE_DIR holds no built anny data: run the tests through `bash .ci/test`")
    (fresh_anny / built[0].parent.name).mkdir(parents=True)
    shutil.copyfile(built[0], fresh_anny / built[0].parent.name / built[0].name)
    seen = []
    result = comfy_host.run_with_progress_hook(fit_prompt(synthetic_media),
                           lambda value, total, preview, node_id=None: seen.append((value, total)))
    assert result.success, result.error
    assert (STEPS, STEPS) in seen
    assert (fresh_anny / "marionette_anny_ready.json").is_file()
    assert result.output("4", 0).model == "anny"


def comfy_host_cache() -> str:
    from conftest import need_env
    return need_env("ANNY_CACHE_DIR")
