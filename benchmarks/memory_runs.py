"""What the memory benchmarks share: resident memory now and at peak, and one child process per
(configuration, frame count) so every measurement starts from a fresh process."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_children(script: str, configs, frame_counts, *args: str) -> dict:
    """{(config, frames): the JSON line `script --child CONFIG FRAMES *args` prints last}."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = {}
    for config in configs:
        for frames in frame_counts:
            out = subprocess.run([sys.executable, script, "--child", config, str(frames), *args], env=env,
                                 check=True, capture_output=True, text=True).stdout
            rows[config, frames] = json.loads(out.strip().splitlines()[-1])
    return rows
