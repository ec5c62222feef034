"""The report's derived metrics, each defined once: reductions against the baseline, compression, the
energy-aware pruning paper's ARP / EPR / LSI / MSE (storage) / CFA, the Green Score, and the Pareto front.

Any ratio whose inputs are missing, or whose denominator is zero, is None (the documents show "n/a").
:data:`DEFINITIONS` states each definition in words; the report carries it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GREEN_SCORE_UNIT = "points per gCO2e/1k inferences"

DEFINITIONS = {
    "reduction_pct": "(1 - x / x_baseline) x 100 for net J/inference (energy), median latency and gCO2e per "
                     "1,000 inferences (carbon); positive = less than the baseline",
    "compression params_x": "parameters of the baseline / parameters of the variant (SuComp's stated definition)",
    "compression bytes_x": "ONNX size of the baseline / ONNX size of the variant (SuComp's INT8 figure is only "
                           "consistent with a size ratio, so both are reported)",
    "ARP": "Accuracy Retention Percentage = metric / metric_baseline x 100 (energy-aware pruning paper, Eq. 4)",
    "EPR": "Execution Power Reduction = (1 - E / E_baseline) x 100 with E = net energy per inference (J), "
           "not average power (Eq. 5)",
    "LSI": "Latency Speedup Index = latency_baseline / latency, median latency, a ratio in x (Eq. 6)",
    "MSE (storage)": "Memory Storage Efficiency = (1 - size / size_baseline) x 100, ONNX file bytes (Eq. 7); "
                     "not mean squared error",
    "CFA": "Carbon Footprint Abatement = (1 - gCO2e / gCO2e_baseline) x 100 (Eq. 8); equals EPR when every "
           "variant uses the same carbon intensity",
    "Green Score": f"metric / gCO2e per 1,000 inferences, in {GREEN_SCORE_UNIT} (accuracy / CO2 as in the "
                   "Green Score paper, no normalisation; compare only at the same workload and intensity)",
}


# ----------------------------------------------------------------------------------------------- arithmetic

def num(x: Any) -> float | None:
    """``x`` as a finite float, else None (booleans are not numbers here)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def ratio(a: Any, b: Any) -> float | None:
    """``a / b``, None when either is missing or ``b`` is zero."""
    a, b = num(a), num(b)
    if a is None or b is None or b == 0:
        return None
    return num(a / b)


def size_ratio(a: Any, b: Any) -> float | None:
    """``a / b`` of two sizes (params, bytes, latency): None unless both are positive."""
    a, b = num(a), num(b)
    return None if a is None or b is None or a <= 0 or b <= 0 else a / b


def reduction_pct(x: Any, base: Any) -> float | None:
    """``(1 - x / base) * 100``: positive when ``x`` is less than ``base``."""
    r = ratio(x, base)
    return None if r is None else (1 - r) * 100


def pct_of(x: Any, base: Any) -> float | None:
    """``x / base * 100``."""
    r = ratio(x, base)
    return None if r is None else r * 100


def mj(j: float | None) -> float | None:
    """Joules to millijoules (None stays None)."""
    return None if j is None else j * 1000


# ----------------------------------------------------------------------------------------------- per variant

@dataclass(frozen=True)
class Figures:
    """The figures of one variant that the metrics compare: ``metric`` (points), ``joules`` (net J/inference),
    ``latency_ms`` (median), ``co2`` (gCO2e per 1,000 inferences), ``params`` and ``size`` (ONNX bytes)."""

    metric: float | None
    joules: float | None
    latency_ms: float | None
    co2: float | None
    params: Any
    size: Any


def compression(v: Figures, base: Figures) -> dict[str, float | None]:
    """``params_x`` = baseline params / params, ``bytes_x`` = baseline size / size."""
    return {"params_x": size_ratio(base.params, v.params), "bytes_x": size_ratio(base.size, v.size)}


def reductions(v: Figures, base: Figures) -> dict[str, float | None]:
    """Reductions (%) of energy, median latency and carbon against the baseline."""
    return {"energy": reduction_pct(v.joules, base.joules), "latency": reduction_pct(v.latency_ms, base.latency_ms),
            "carbon": reduction_pct(v.co2, base.co2)}


def paper_metrics(v: Figures, base: Figures) -> dict[str, float | None]:
    """The energy-aware pruning paper's Eqs. 4-8 (see :data:`DEFINITIONS`)."""
    return {"arp_pct": pct_of(v.metric, base.metric), "epr_pct": reduction_pct(v.joules, base.joules),
            "lsi_x": size_ratio(base.latency_ms, v.latency_ms), "mse_storage_pct": reduction_pct(v.size, base.size),
            "cfa_pct": reduction_pct(v.co2, base.co2)}


def green_score(v: Figures) -> float | None:
    """metric / gCO2e per 1,000 inferences; None unless the carbon figure is positive."""
    return ratio(v.metric, v.co2) if (num(v.co2) or 0) > 0 else None


def metric_delta(v: Figures, base: Figures) -> float | None:
    """Metric change in points against the baseline."""
    return None if v.metric is None or base.metric is None else v.metric - base.metric


# ----------------------------------------------------------------------------------------------- Pareto

def pareto_front(points: list[dict[str, Any]], key: str) -> set[int]:
    """Indices of the points on the Pareto front of (higher metric, lower ``key``)."""
    ok = [(i, p["metric"], p[key]) for i, p in enumerate(points) if p["metric"] is not None and p[key] is not None]
    front = set()
    for i, m, x in ok:
        if not any((m2 >= m and x2 <= x) and (m2 > m or x2 < x) for _, m2, x2 in ok):
            front.add(i)
    return front
