"""The pipeline's ``run`` dict as the report reads it, in one place: a small typed view over the shape the
pipeline writes (``toolchain.pipeline``, the ``report`` stage), which stays a plain dict on the pipeline's side.

``run`` keys: ``title``, ``model`` {source, sha256, task}, ``target`` {name, carbon_g_per_kwh, carbon_source},
``metric_name``, ``variants`` (the first is the baseline, the last the pipeline's result) each {name, onnx,
metric, params, size_bytes, status, measurement (a cost table's ``measurement`` dict) or None, cost_table (a
cost table's dict) or None}, ``pareto`` [{label, metric, joules, latency_ms, config}], ``stages``, ``notes``.
Every key may be missing; what is missing reads as None (or empty).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from toolchain.formats.costs import MeasurementRecord


def _dict(x: Any) -> dict[str, Any]:
    return dict(x) if isinstance(x, Mapping) else {}


@dataclass(frozen=True)
class VariantInput:
    """One variant of the run. ``metric``, ``params`` and ``size_bytes`` are as the run gives them (the
    report passes them through or reads them as numbers); ``measurement`` is None when there is none."""

    name: str
    onnx: Any
    metric: Any
    params: Any
    size_bytes: Any
    status: str | None
    measurement: MeasurementRecord | None
    cost_table: Any

    @classmethod
    def of(cls, v: Mapping[str, Any]) -> VariantInput:
        v = _dict(v)
        m = v.get("measurement")
        return cls(name=str(v.get("name", "?")), onnx=v.get("onnx"), metric=v.get("metric"), params=v.get("params"),
                   size_bytes=v.get("size_bytes"), status=v.get("status"),
                   measurement=MeasurementRecord.from_dict(m) if m and isinstance(m, Mapping) else None,
                   cost_table=v.get("cost_table"))


@dataclass(frozen=True)
class RunInput:
    """The whole run: what :func:`toolchain.report.build.build_report` reads."""

    title: str
    model: dict[str, Any]
    target: dict[str, Any]
    metric_name: str
    variants: tuple[VariantInput, ...]
    pareto: list[Any]
    stages: list[Any]
    notes: list[str]

    @classmethod
    def of(cls, run: Mapping[str, Any]) -> RunInput:
        run = _dict(run)
        return cls(title=str(run.get("title") or "Sustainability report"), model=_dict(run.get("model")),
                   target=_dict(run.get("target")), metric_name=str(run.get("metric_name") or "metric"),
                   variants=tuple(VariantInput.of(v) for v in run.get("variants") or []),
                   pareto=list(run.get("pareto") or []), stages=list(run.get("stages") or []),
                   notes=[str(n) for n in run.get("notes") or []])
