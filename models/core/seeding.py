"""Seeded randomness that leaves the caller's global random stream untouched."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def seeded(seed: int):
    """Inside: torch's global CPU generator seeded with `seed` (e.g. to initialise test-size models
    reproducibly); outside, the global random state is as it was before."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield
