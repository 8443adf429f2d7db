"""Anny's first use: a full data build in a child process (time, progress rate, what stays on disk),
the check once built, loading the built data in this process, and how fast a cancel ends the build.

    python benchmarks/anny_first_use.py [--skip-full]

Uses temporary cache folders; prints one line per figure.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import harness  # noqa: E402,F401  (the library as `marionette.*`)
from marionette.models.body.anny_data import STEPS, anny_data_ready, build_anny_data  # noqa: E402


class Cancel(Exception):
    pass


def full_build(cache: Path) -> None:
    ticks = []
    started = time.monotonic()
    build_anny_data(cache, on_progress=lambda done, total: ticks.append((time.monotonic() - started, done)),
                    log=lambda line: None)
    took = time.monotonic() - started
    half = next(t for t, done in ticks if done >= STEPS // 2)
    kept = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    print(f"full build: {took:.1f} s (50 % reached after {half:.1f} s, {len(ticks)} progress calls); "
          f"kept on disk {kept / 1e6:.0f} MB")
    started = time.perf_counter()
    ready = anny_data_ready(cache)
    print(f"check once built: {1000 * (time.perf_counter() - started):.2f} ms (ready={ready})")
    import anny
    import anny.paths
    anny.paths.set_anny_cache_path(cache)
    started = time.monotonic()
    anny.Anny(skinning_method="lbs")
    print(f"load of the built data in this process: {time.monotonic() - started:.1f} s")


def cancel_latency(cache: Path, at: int) -> None:
    state = {}

    def on_progress(done, total):
        if done >= at:
            state["at"] = time.monotonic()
            raise Cancel()
    started = time.monotonic()
    try:
        build_anny_data(cache, on_progress=on_progress, log=lambda line: None)
    except Cancel:
        pass
    ended = time.monotonic()
    left = [p.name for p in cache.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".partial")]
    print(f"cancel at {100 * at // STEPS} % (after {state['at'] - started:.1f} s): build ended "
          f"{1000 * (ended - state['at']):.0f} ms later; cache files left: {left}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-full", action="store_true", help="only the cancel latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cancel_latency(Path(tmp) / "cancel", at=STEPS // 10)
        if not args.skip_full:
            full_build(Path(tmp) / "full")


if __name__ == "__main__":
    main()
