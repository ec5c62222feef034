"""Latency measurement: warm-up, then interleaved runs so that every candidate sees the same machine
state (thermal, other load), with medians and spread."""

from __future__ import annotations

import time
from collections.abc import Callable

from toolchain.core.stats import Summary


def interleaved(candidates: dict[str, Callable[[], object]], *, warmup: int = 3, runs: int = 20,
                min_seconds: float = 0.0) -> dict[str, Summary]:
    """Time each callable ``runs`` times, round-robin (A B C A B C ...), after ``warmup`` untimed rounds.
    Keeps going past ``runs`` until ``min_seconds`` of timed work has accumulated."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    spent, rounds = 0.0, 0
    while rounds < runs or spent < min_seconds:
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            samples[name].append(dt)
            spent += dt
        rounds += 1
    return {name: Summary.of_seconds(s) for name, s in samples.items()}
