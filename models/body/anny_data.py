"""Anny's model data, built once into its cache folder by a child process that can be stopped.

The first `anny.Anny()` reads ~1,100 gzip blend-shape targets and writes ~800 MB of cache files
(1–3 minutes on 2 cores), each straight to its final name: a build stopped part-way would leave a
truncated file that every later load fails on. So the build runs in a child Python process
(`anny_data_worker.py`): its progress comes back line by line, a cancel ends it at once, its cache
writes go through a temporary name and an atomic rename, a lock file keeps two processes (ComfyUI and
an install script, or two threads) from building at the same time, and the intermediate files are
removed afterwards — only the compact file is read later. A marker file records a finished build, so
later checks need no child at all. Only the standard library is imported here (install.py runs it
before anything else is known to work).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import MarionetteError

WORKER = Path(__file__).with_name("anny_data_worker.py")
MARKER = "marionette_anny_ready.json"
LOCK = ".marionette_build.lock"
PARTIAL = ".partial"          # suffix of a cache file being written (see the worker)
EVENT = "MARIONETTE-ANNY "    # prefix of the worker's progress lines
STEPS = 1000                  # progress units of one build
POLL_S = 0.1                  # how often progress and cancel are checked while the child runs
RUN_BY_PATH = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"

Progress = Callable[[int, int], None]   # on_progress(done, total); raising from it cancels the build


def anny_cache_dir() -> Path:
    """The folder anny reads its cache from in this process (anny fixes it when first imported)."""
    paths = sys.modules.get("anny.paths")
    if paths is not None:
        return Path(paths.get_anny_cache_path())
    return Path(os.environ.get("ANNY_CACHE_DIR") or Path.home() / ".cache" / "anny")


def anny_version() -> str | None:
    try:
        return importlib.metadata.version("anny")
    except importlib.metadata.PackageNotFoundError:
        return None


def anny_data_ready(cache: Path | None = None) -> bool:
    """True when a finished build of the installed anny version is in `cache` (no child needed)."""
    cache = Path(cache or anny_cache_dir())
    try:
        marker = json.loads((cache / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        return marker["anny"] == anny_version() and bool(files) and all(
            (cache / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


class _BuildLock:
    """An exclusive lock on a file in the cache folder: one builder across threads and processes."""

    def __init__(self, path: Path):
        self.path, self.handle = path, None

    def try_acquire(self) -> bool:
        handle = open(self.path, "a+b")
        try:
            if os.name == "nt":
                import msvcrt
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self.handle = handle
        return True

    def release(self) -> None:
        if self.handle is None:
            return
        try:
            if os.name == "nt":
                import msvcrt
                self.handle.seek(0)
                msvcrt.locking(self.handle.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
        finally:
            self.handle.close()
            self.handle = None


def build_anny_data(cache: Path | None = None, on_progress: Progress | None = None,
                    log: Callable[[str], None] = print, python: str | None = None) -> str:
    """Makes sure anny's model data is built in `cache` (default: where this process's anny reads it).

    Returns "ready" (nothing to do, or another process finished it while we waited) or "built".
    `on_progress(done, total)` is called at least every POLL_S seconds, also while waiting for another
    builder; an exception raised from it ends the child, removes what it left unfinished and is
    re-raised. A failed build raises MarionetteError with the child's last output lines.
    """
    cache = Path(cache or anny_cache_dir()).resolve()
    if anny_data_ready(cache):
        return "ready"
    if anny_version() is None or importlib.util.find_spec("anny") is None:
        raise MarionetteError("The anny body model package is not installed.",
                              "pip install -r requirements.txt in the Marionette folder (it lists anny).")
    cache.mkdir(parents=True, exist_ok=True)
    report = on_progress or (lambda done, total: None)
    lock = _BuildLock(cache / LOCK)
    waited = False
    while not lock.try_acquire():
        if not waited:
            log(f"Anny model data: another process is building it in {cache}; waiting for it.")
            waited = True
        report(0, STEPS)
        time.sleep(POLL_S)
    try:
        if anny_data_ready(cache):
            return "ready"
        _remove_partial_files(cache)
        log(f"Anny model data: preparing it in {cache} (first use only; a full build takes 1-3 minutes).")
        started = time.monotonic()
        _run_worker(cache, report, python or sys.executable)
        log(f"Anny model data: ready after {time.monotonic() - started:.0f} s.")
        return "built"
    finally:
        lock.release()


def _remove_partial_files(cache: Path) -> None:
    """Files a stopped child was writing (only ever under their temporary name)."""
    for path in [*cache.glob(f"*{PARTIAL}"), *cache.glob(f"v*/*{PARTIAL}")]:
        path.unlink(missing_ok=True)


def _run_worker(cache: Path, report: Progress, python: str) -> None:
    env = dict(os.environ, ANNY_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
    with open(cache / "marionette_build.log", "w+", encoding="utf-8", errors="replace") as errors:
        # run by path without putting its folder first on sys.path (models/body/types.py would shadow `types`)
        command = [python, "-c", RUN_BY_PATH, str(WORKER), str(cache)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, env=env,
                                 cwd=str(cache), text=True, encoding="utf-8", errors="replace")
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True)
        reader.start()
        done = 0
        try:
            while True:
                finished = child.poll() is not None
                if finished:
                    reader.join()
                while not lines.empty():
                    done = _progress_of(lines.get(), done)
                if finished:
                    break
                report(done, STEPS)
                time.sleep(POLL_S)
        except BaseException:
            child.kill()
            child.wait()
            _remove_partial_files(cache)
            raise
        if child.returncode != 0:
            errors.seek(0)
            tail = "\n".join(errors.read().strip().splitlines()[-8:])
            raise MarionetteError(f"Building the Anny model data in {cache} failed (exit code {child.returncode}): "
                                  f"{tail}", "Check free disk space (~1 GB during the build) and that `anny` "
                                  "imports in ComfyUI's Python; the next use tries again.")
        report(STEPS, STEPS)


def _progress_of(line: str, done: int) -> int:
    if line.startswith(EVENT):
        try:
            return max(done, min(STEPS, int(json.loads(line[len(EVENT):])["done"])))
        except (ValueError, KeyError, TypeError):
            pass
    return done
