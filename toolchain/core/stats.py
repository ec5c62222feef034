"""One statistics class for every repeated measurement the tool reports (latency, joules, watts).

:class:`Summary` holds the mean, the sample standard deviation, a 95% confidence interval of the mean
(Student's t, so that five energy windows and two hundred timed calls are treated alike), the median
and the 10th/90th percentiles of ``n`` values. Units are the caller's: latencies are summarised in
milliseconds (:meth:`Summary.of_seconds`), energies in joules.

Two on-disk shapes are written from it, both unchanged from earlier versions of the cost table:
:meth:`Summary.to_dict` (``mean, std, ci95, n, cv_pct``) for energy and power, and
:meth:`Summary.to_latency_dict` (``median_ms, mean_ms, std_ms, p10_ms, p90_ms, ci95_ms, runs``) for latency.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
       2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
       2.045, 2.042)


def t95(n: int) -> float:
    """The two-sided 95% Student's t quantile for ``n`` values (``n - 1`` degrees of freedom); 0 for one value."""
    df = n - 1
    return 0.0 if df <= 0 else T95[df - 1] if df <= len(T95) else 1.96


@dataclass(frozen=True)
class Summary:
    """``n`` repeated values: mean, sample standard deviation, 95% CI of the mean (Student's t), median,
    10th and 90th percentiles. ``cv_pct`` is the coefficient of variation, ``spread_pct`` (p90 - p10) /
    median, both in percent."""

    mean: float
    std: float
    ci95: tuple[float, float]
    n: int
    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        """Summarise ``values`` (at least one)."""
        if not values:
            raise ValueError("no values")
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        half = t95(len(values)) * std / math.sqrt(len(values))
        q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
        return cls(mean, std, (mean - half, mean + half), len(values), statistics.median(values), q[0], q[-1])

    @classmethod
    def of_seconds(cls, samples: list[float]) -> Summary:
        """Per-call durations in seconds, summarised in milliseconds."""
        return cls.of([s * 1000 for s in samples])

    @property
    def cv_pct(self) -> float:
        return 100 * self.std / self.mean if self.mean else 0.0

    @property
    def spread_pct(self) -> float:
        return 100 * (self.p90 - self.p10) / self.median if self.median else 0.0

    def scaled(self, k: float) -> Summary:
        """Every figure multiplied by ``k`` (e.g. joules per batch -> per inference)."""
        lo, hi = sorted((self.ci95[0] * k, self.ci95[1] * k))
        p10, p90 = sorted((self.p10 * k, self.p90 * k))
        return Summary(self.mean * k, self.std * abs(k), (lo, hi), self.n, self.median * k, p10, p90)

    def to_dict(self) -> dict:
        """``{mean, std, ci95, n, cv_pct}``: the cost table's shape for energy and power."""
        return {"mean": self.mean, "std": self.std, "ci95": list(self.ci95), "n": self.n, "cv_pct": self.cv_pct}

    def to_latency_dict(self) -> dict:
        """``{median_ms, mean_ms, std_ms, p10_ms, p90_ms, ci95_ms, runs}``: the cost table's latency shape
        (values in milliseconds)."""
        return {"median_ms": self.median, "mean_ms": self.mean, "std_ms": self.std, "p10_ms": self.p10,
                "p90_ms": self.p90, "ci95_ms": self.ci95, "runs": self.n}
