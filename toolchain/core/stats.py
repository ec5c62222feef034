"""TODO docstring."""

from __future__ import annotations

import math
import statistics
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


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and a 95% confidence interval of the mean (Student's t) over ``n``
    repeats; ``cv_pct`` is the coefficient of variation."""

    mean: float
    std: float
    ci95: tuple[float, float]
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            raise ValueError("no values")
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        df = len(values) - 1
        t = 0.0 if df == 0 else _T95[df - 1] if df <= len(_T95) else 1.96
        half = t * std / math.sqrt(len(values))
        return cls(mean, std, (mean - half, mean + half), len(values))

    @property
    def cv_pct(self) -> float:
        return 100 * self.std / self.mean if self.mean else 0.0

    def scaled(self, k: float) -> Stat:
        return Stat(self.mean * k, self.std * abs(k), (self.ci95[0] * k, self.ci95[1] * k), self.n)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "ci95": list(self.ci95), "n": self.n, "cv_pct": self.cv_pct}
