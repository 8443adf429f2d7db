"""Anny's first use: the data build runs in a child process that reports progress, stops at once on
cancel without leaving partial files, runs once for concurrent callers, and is skipped once done;
install.py does it at install time and never fails the installation.

A full build takes 1-3 minutes, so these tests start from the compact file CI's setup already built
(copied into a temporary cache) or stop a real build early."""
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import need_env
from marionette.models.body import anny_data
from marionette.models.body.anny_data import STEPS, anny_data_ready, build_anny_data
from marionette.models.errors import MarionetteError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compact_file() -> Path:
    """The compact data file .ci/setup.sh built (the only file anny reads once built)."""
    found = sorted(Path(need_env("ANNY_CACHE_DIR")).glob("v*/build_compact_model_data_*.safetensors"))
    if not found:
        pytest.skip("ANNY_CACHE_DIR holds no built anny data: run the tests through `bash .ci/test`")
    return found[0]


def cache_with(tmp_path: Path, compact: Path, truncate: int | None = None) -> Path:
    """A cache folder holding a copy of the compact file (cut to `truncate` bytes if given), no marker."""
    cache = tmp_path / "anny"
    target = cache / compact.parent.name / compact.name
    target.parent.mkdir(parents=True)
    if truncate is None:
        shutil.copyfile(compact, target)
    else:
        target.write_bytes(compact.read_bytes()[:truncate])
    return cache


class Children:
    """Records the child processes build_anny_data starts."""

    def __init__(self, monkeypatch):
        self.started = []
        popen = subprocess.Popen

        def record(*args, **kwargs):
            child = popen(*args, **kwargs)
            self.started.append(child)
            return child
        monkeypatch.setattr(anny_data.subprocess, "Popen", record)


class Cancel(Exception):
    pass


def cancel_when(condition):
    """An on_progress that raises Cancel once condition(done) holds; keeps the values and the time."""
    state = {"seen": [], "at": None}

    def on_progress(done, total):
        assert total == STEPS
        state["seen"].append(done)
        if condition(done):
            state["at"] = time.monotonic()
            raise Cancel()
    return on_progress, state


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and p.name not in (anny_data.LOCK, "marionette_build.log"))


def test_built_data_gets_its_marker_once_and_is_then_used_without_a_child(tmp_path, compact_file, monkeypatch):
    cache = cache_with(tmp_path, compact_file)
    stale = cache / compact_file.parent.name / "load_data_0.safetensors.partial"
    stale.write_bytes(b"left by a stopped build")
    children = Children(monkeypatch)
    seen = []
    assert not anny_data_ready(cache)
    assert build_anny_data(cache, on_progress=lambda done, total: seen.append(done), log=lambda line: None) == "built"
    assert len(children.started) == 1 and children.started[0].returncode == 0
    assert anny_data_ready(cache) and seen[-1] == STEPS
    # the compact file was loaded, not rebuilt; the stale partial file is gone
    data = cache / compact_file.parent.name / compact_file.name
    assert leftovers(cache) == sorted([str(data.relative_to(cache)), anny_data.MARKER])
    assert data.stat().st_size == compact_file.stat().st_size
    assert build_anny_data(cache, log=lambda line: None) == "ready"
    assert len(children.started) == 1
    data.write_bytes(data.read_bytes()[:1000])    # a changed data file no longer counts as built
    assert not anny_data_ready(cache)


def test_cancel_stops_a_real_build_at_once_and_leaves_no_partial_files(tmp_path, monkeypatch):
    cache = tmp_path / "anny"
    children = Children(monkeypatch)
    on_progress, state = cancel_when(lambda done: done > 0)      # reading anny's blend-shape targets
    with pytest.raises(Cancel):
        build_anny_data(cache, on_progress=on_progress, log=lambda line: None)
    latency = time.monotonic() - state["at"]
    child = children.started[0]
    assert child.returncode is not None and child.returncode != 0, "the child must be ended, not left running"
    assert latency < 2.0
    assert state["seen"] == sorted(state["seen"]) and 0 < state["seen"][-1] < STEPS
    assert leftovers(cache) == [] and not anny_data_ready(cache)
    lock = anny_data._BuildLock(cache / anny_data.LOCK)
    assert lock.try_acquire(), "the build lock must be released after a cancel"
    lock.release()


def test_a_truncated_cache_file_is_removed_and_rebuilt(tmp_path, compact_file):
    """A file cut short by an older, killed build would make every load fail: it is deleted, the build
    starts again (stopped here once it reads targets)."""
    cache = cache_with(tmp_path, compact_file, truncate=4096)
    on_progress, _ = cancel_when(lambda done: done > 0)
    with pytest.raises(Cancel):
        build_anny_data(cache, on_progress=on_progress, log=lambda line: None)
    assert not (cache / compact_file.parent.name / compact_file.name).exists()
    assert "removing unreadable anny cache file" in (cache / "marionette_build.log").read_text()


def test_concurrent_first_uses_build_once(tmp_path, compact_file, monkeypatch):
    cache = cache_with(tmp_path, compact_file)
    children = Children(monkeypatch)
    results, lines, errors = [], [], []

    def first_use():
        try:
            results.append(build_anny_data(cache, log=lines.append))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.3)          # the second caller arrives while the first one's child runs
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(results) == ["built", "ready"] and len(children.started) == 1
    assert any("another process is building it" in line for line in lines)


def test_a_failing_child_is_reported_with_its_output(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'no space left on device' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    with pytest.raises(MarionetteError, match="exit code 3.*no space left on device"):
        build_anny_data(tmp_path / "anny", python=str(fake_python), log=lambda line: None)
    assert not anny_data_ready(tmp_path / "anny")


def fake_comfyui(tmp_path: Path) -> Path:
    """<tmp>/ComfyUI/custom_nodes/marionette with this pack's install.py and library."""
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "marionette"
    pack.mkdir(parents=True)
    shutil.copyfile(ROOT / "install.py", pack / "install.py")
    (pack / "models").symlink_to(ROOT / "models", target_is_directory=True)
    return pack


def run_install(pack: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "ANNY_CACHE_DIR"}
    return subprocess.run([sys.executable, "install.py"], cwd=pack, env={**environ, **env}, capture_output=True,
                          text=True, timeout=300)


def test_install_script_prepares_comfyui_models_anny(tmp_path, compact_file):
    pack = fake_comfyui(tmp_path)
    cache = tmp_path / "ComfyUI" / "models" / "anny"
    shutil.copytree(compact_file.parent, cache / compact_file.parent.name)
    first = run_install(pack)
    assert first.returncode == 0, first.stderr
    assert anny_data_ready(cache) and "100%" in first.stdout
    second = run_install(pack)
    assert second.returncode == 0 and f"already built in {cache}" in second.stdout


def test_install_script_never_fails_the_installation(tmp_path):
    pack = fake_comfyui(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "anny.py").write_text("raise ImportError('anny is broken here')\n")
    result = run_install(pack, PYTHONPATH=str(broken))
    assert result.returncode == 0, result.stderr
    assert "anny is broken here" in result.stdout and "built on first use" in result.stdout
    assert not anny_data_ready(tmp_path / "ComfyUI" / "models" / "anny")
    skipped = run_install(pack, MARIONETTE_SKIP_ANNY_BUILD="1")
    assert skipped.returncode == 0 and "built on first use" in skipped.stdout
