"""Latency measurement: warm-up, then interleaved runs so that every candidate sees the same machine
state (thermal, other load), with medians and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds over ``runs`` timed calls: median, mean, standard deviation,
    10th/90th percentiles and a 95% interval of the mean (normal approximation)."""

    median_ms: float
    mean_ms: float
    std_ms: float
    p10_ms: float
    p90_ms: float
    ci95_ms: tuple[float, float]
    runs: int

    @classmethod
    def from_seconds(cls, samples: list[float]) -> LatencyStats:
        ms = sorted(s * 1000 for s in samples)
        mean = statistics.fmean(ms)
        std = statistics.stdev(ms) if len(ms) > 1 else 0.0
        half = 1.96 * std / len(ms) ** 0.5
        q = statistics.quantiles(ms, n=10) if len(ms) > 1 else [ms[0]] * 9
        return cls(statistics.median(ms), mean, std, q[0], q[-1], (mean - half, mean + half), len(ms))

    @property
    def spread_pct(self) -> float:
        """(p90 - p10) / median, in percent."""
        return 100 * (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def interleaved(candidates: dict[str, Callable[[], object]], *, warmup: int = 3, runs: int = 20,
                min_seconds: float = 0.0) -> dict[str, LatencyStats]:
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
    return {name: LatencyStats.from_seconds(s) for name, s in samples.items()}
