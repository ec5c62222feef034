"""Per-layer cost tables: where a model's time and energy go on a target, per PyTorch module.

Per-node kernel times come from a separate ORT profiler run (:mod:`toolchain.profile.trace`); they are
mapped to modules through the node-to-module map the export stored in the model. Energy is attributed
with the ``time-share`` method: the measured net (active) energy per inference times each layer's share
of the profiled kernel time. MACs, parameters and bytes moved come from the ONNX graph with shapes
inferred at the profiled input shapes.

On disk (schema ``toolchain.cost-table`` v1) ``measurement`` is the nested dict that
:meth:`toolchain.profile.measure.Measurement.to_dict` writes (less its ``windows``, plus ``gco2e_per_1000``).
It is kept as is, so that :meth:`CostTable.to_json` writes it back byte for byte; read it through
:attr:`CostTable.measured`, a :class:`MeasurementRecord` of frozen dataclasses whose attributes are the
dict's keys::

    table.measured.joules_per_inference.net.cv_pct   # measurement["joules_per_inference"]["net"]["cv_pct"]
    table.measured.latency_ms.median_ms              # measurement["latency_ms"]["median_ms"]

The records are lenient readers: a key that is missing (an older or partial table, a comparison column)
reads as None (an empty tuple for lists), values are not converted, so callers decide what n/a means.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError

SCHEMA = "toolchain.cost-table"
SCHEMA_VERSION = 1
METHOD = "time-share"
UNMAPPED = "(unmapped)"
CSV_COLUMNS = ["rank", "module", "module_type", "onnx_nodes", "kernels", "op_types", "latency_ms_mean", "latency_ms_std",
               "share", "energy_j_mean", "energy_j_std", "energy_kind", "macs", "params", "bytes_moved",
               "model_sha256", "target", "meter", "method", "repeats", "schema_version"]


# ----------------------------------------------------------------------------------- typed measurement records

def _obj(data: Any, key: str) -> Mapping[str, Any]:
    """``data[key]`` when both are mappings, else an empty mapping (missing or malformed reads as absent)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _pair(value: Any) -> tuple[Any, Any] | None:
    """A two-value interval (JSON list or in-memory tuple) as a tuple, else None."""
    return (value[0], value[1]) if isinstance(value, list | tuple) and len(value) == 2 else None


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _seq(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else ()


@dataclass(frozen=True)
class EnergyStat:
    """``{mean, std, ci95, n, cv_pct}`` over the windows (:meth:`toolchain.core.stats.Summary.to_dict`):
    joules per inference or watts."""

    mean: float | None = None
    std: float | None = None
    ci95: tuple[float, float] | None = None
    n: int | None = None
    cv_pct: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnergyStat:
        return cls(d.get("mean"), d.get("std"), _pair(d.get("ci95")), d.get("n"), d.get("cv_pct"))


@dataclass(frozen=True)
class LatencyStat:
    """``{median_ms, mean_ms, std_ms, p10_ms, p90_ms, ci95_ms, runs}`` of the calls timed inside the windows
    (:meth:`toolchain.core.stats.Summary.to_latency_dict`)."""

    median_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    ci95_ms: tuple[float, float] | None = None
    runs: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStat:
        return cls(d.get("median_ms"), d.get("mean_ms"), d.get("std_ms"), d.get("p10_ms"), d.get("p90_ms"),
                   _pair(d.get("ci95_ms")), d.get("runs"))


@dataclass(frozen=True)
class NetGross:
    """``{net, gross, kind}``: a figure net of the idle baseline and as the meter read it (``kind``:
    "measured" or "estimated"); the shape of ``joules_per_inference`` and ``watts``."""

    net: EnergyStat = field(default_factory=EnergyStat)
    gross: EnergyStat = field(default_factory=EnergyStat)
    kind: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetGross:
        return cls(EnergyStat.from_dict(_obj(d, "net")), EnergyStat.from_dict(_obj(d, "gross")), d.get("kind"))


@dataclass(frozen=True)
class CarbonStat:
    """``gco2e_per_1000``: gCO2e per 1,000 inferences at ``intensity_g_per_kwh`` (:func:`grams_co2e_per_1000`)."""

    mean: float | None = None
    ci95: tuple[float, float] | None = None
    kind: str | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CarbonStat:
        return cls(d.get("mean"), _pair(d.get("ci95")), d.get("kind"), d.get("intensity_g_per_kwh"),
                   d.get("intensity_source"))


@dataclass(frozen=True)
class MeterInfo:
    """The meter: ``name``, ``kind`` ("measured"/"estimated"), ``source``; the table's top-level ``meter``
    also has ``idle_watts``."""

    name: str | None = None
    kind: str | None = None
    source: str | None = None
    idle_watts: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MeterInfo:
        return cls(d.get("name"), d.get("kind"), d.get("source"), d.get("idle_watts"))


@dataclass(frozen=True)
class IdleBaseline:
    """``idle_baseline``: the meter's watts over ``seconds`` of idling, subtracted to give net figures."""

    watts: float | None = None
    seconds: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IdleBaseline:
        return cls(d.get("watts"), d.get("seconds"))


@dataclass(frozen=True)
class WindowRecord:
    """One measured window (:class:`toolchain.profile.measure.Window`); cost tables do not keep them."""

    inferences: int | None = None
    seconds: float | None = None
    gross_j: float | None = None
    net_j: float | None = None
    domains: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowRecord:
        return cls(d.get("inferences"), d.get("seconds"), d.get("gross_j"), d.get("net_j"), dict(_obj(d, "domains")))


@dataclass(frozen=True)
class MeasurementRecord:
    """A cost table's ``measurement`` (also a comparison column's, which carries the same keys) as typed
    records. Energy figures are per inference (one call at ``batch``)."""

    label: str | None = None
    batch: int | None = None
    meter: MeterInfo = field(default_factory=MeterInfo)
    idle_baseline: IdleBaseline = field(default_factory=IdleBaseline)
    repeats: int | None = None
    inferences_per_window: tuple[int, ...] = ()
    latency_ms: LatencyStat = field(default_factory=LatencyStat)
    joules_per_inference: NetGross = field(default_factory=NetGross)
    watts: NetGross = field(default_factory=NetGross)
    gco2e_per_1000: CarbonStat = field(default_factory=CarbonStat)
    windows: tuple[WindowRecord, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> str | None:
        """The energy's kind, "measured" or "estimated": the meter's, else the energy figures'."""
        return self.meter.kind or self.joules_per_inference.kind

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MeasurementRecord:
        """Read ``d`` leniently: what is missing or not of its shape reads as absent."""
        if not isinstance(d, Mapping):
            d = {}
        return cls(label=d.get("label"), batch=d.get("batch"), meter=MeterInfo.from_dict(_obj(d, "meter")),
                   idle_baseline=IdleBaseline.from_dict(_obj(d, "idle_baseline")), repeats=d.get("repeats"),
                   inferences_per_window=_seq(d.get("inferences_per_window")),
                   latency_ms=LatencyStat.from_dict(_obj(d, "latency_ms")),
                   joules_per_inference=NetGross.from_dict(_obj(d, "joules_per_inference")),
                   watts=NetGross.from_dict(_obj(d, "watts")),
                   gco2e_per_1000=CarbonStat.from_dict(_obj(d, "gco2e_per_1000")),
                   windows=tuple(WindowRecord.from_dict(w) for w in _seq(d.get("windows")) if isinstance(w, Mapping)),
                   notes=tuple(str(n) for n in _seq(d.get("notes"))))


@dataclass
class LayerCost:
    """One row: a PyTorch module and what its ONNX nodes cost per inference on the target."""

    module: str
    module_type: str
    onnx_nodes: list[str]
    kernels: int
    op_types: list[str]
    latency_ms_mean: float
    latency_ms_std: float
    share: float
    energy_j_mean: float
    energy_j_std: float
    macs: int
    params: int
    bytes_moved: int

    @property
    def label(self) -> str:
        return self.module or "(model)"


@dataclass
class CostTable:
    """A versioned per-layer cost table with everything needed to judge and reuse it."""

    model: dict[str, Any]
    target: dict[str, Any]
    meter: dict[str, Any]
    measurement: dict[str, Any]
    profile: dict[str, Any]
    rows: list[LayerCost]
    versions: dict[str, Any]
    method: str = METHOD
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def energy_kind(self) -> str:
        return self.meter.get("kind", "measured")

    @property
    def measured(self) -> MeasurementRecord:
        """``measurement`` as typed records (parsed on each access; ``measurement`` stays the written dict)."""
        return MeasurementRecord.from_dict(self.measurement)

    @property
    def meter_info(self) -> MeterInfo:
        """``meter`` (name, kind, source, idle_watts) as a typed record."""
        return MeterInfo.from_dict(self.meter)

    @property
    def joules_per_inference(self) -> float:
        """Net joules per inference (mean over the windows)."""
        mean = self.measured.joules_per_inference.net.mean
        if mean is None:
            raise ToolchainError("cost table without a net J/inference (measurement.joules_per_inference.net.mean)")
        return mean

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "rows"}
        data["rows"] = [asdict(r) for r in self.rows]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        for rank, r in enumerate(self.rows, 1):
            writer.writerow([rank, r.label, r.module_type, " ".join(r.onnx_nodes), r.kernels, " ".join(r.op_types),
                             f"{r.latency_ms_mean:.6g}", f"{r.latency_ms_std:.6g}", f"{r.share:.6g}",
                             f"{r.energy_j_mean:.6g}", f"{r.energy_j_std:.6g}", self.energy_kind, r.macs, r.params,
                             r.bytes_moved, self.model.get("sha256", ""), self.target.get("name", ""),
                             self.meter.get("name", ""), self.method, _blank(self.measured.repeats),
                             self.schema_version])
        return buf.getvalue()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "cost table") -> CostTable:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ToolchainError(f"{source}: not a toolchain cost table (schema {data.get('schema') if isinstance(data, dict) else None!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ToolchainError(f"{source}: cost-table schema version {data.get('schema_version')} is not "
                                 f"{SCHEMA_VERSION}", hint="profile the model again with this toolchain")
        try:
            rows = [LayerCost(**r) for r in data["rows"]]
            table = cls(model=data["model"], target=data["target"], meter=data["meter"],
                        measurement=data["measurement"], profile=data["profile"], rows=rows,
                        versions=data["versions"], method=data["method"], created=data["created"])
        except (KeyError, TypeError) as exc:
            raise ToolchainError(f"{source}: malformed cost table ({exc})") from None
        table.validate(source)
        return table

    def validate(self, source: str = "cost table") -> None:
        """Refuse, in one line, a table whose figures are nonsense: a number in a row, the measurement or
        the meter that is not finite (NaN, infinity) or is negative (the confidence bounds and the 10th and
        90th latency percentiles, which can fall below zero, only need to be finite), a row value that is
        not a number, or a target without a name."""
        if not isinstance(self.model, dict) or not isinstance(self.target, dict) or not isinstance(self.meter, dict) \
                or not isinstance(self.measurement, dict):
            raise ToolchainError(f"{source}: malformed cost table (model, target, meter and measurement must be objects)")
        name = self.target.get("name")
        if not isinstance(name, str) or not name:
            raise ToolchainError(f"{source}: malformed cost table (no target name): it cannot be checked against "
                                 "a target", hint="profile the model again with `toolchain profile`")
        for i, row in enumerate(self.rows, 1):
            for key in _ROW_NUMBERS:
                value = getattr(row, key)
                if not _is_number(value):
                    raise ToolchainError(f"{source}: malformed cost table (row {i} {row.label!r}: {key} is "
                                         f"{value!r}, not a number)")
                _check_figure(value, f"row {i} {row.label!r}: {key}", source, signed=False)
        _check_tree(self.measurement, "measurement", source)
        _check_tree(self.meter, "meter", source)

    @classmethod
    def load(cls, path: str | Path) -> CostTable:
        p = Path(path)
        if p.is_dir():
            p = p / "costs.json"
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ToolchainError(f"{path}: no such cost table") from None
        except (OSError, ValueError) as exc:
            raise ToolchainError(f"{path}: not a JSON cost table ({exc})") from None
        return cls.from_dict(data, str(path))

    def by_module(self) -> dict[str, LayerCost]:
        return {r.module: r for r in self.rows}


_ROW_NUMBERS = ("kernels", "latency_ms_mean", "latency_ms_std", "share", "energy_j_mean", "energy_j_std", "macs",
                "params", "bytes_moved")
# figures that may be below zero in a sound table: confidence bounds (mean - t * sem) and percentiles
# (statistics.quantiles extrapolates below the smallest of a few values)
_SIGNED_KEYS = frozenset({"ci95", "ci95_ms", "p10_ms", "p90_ms"})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_figure(value: float, where: str, source: str, *, signed: bool) -> None:
    if not math.isfinite(value):
        raise ToolchainError(f"{source}: {where} is {value}, not a finite number: the cost table is corrupt",
                             hint="profile the model again with `toolchain profile`")
    if value < 0 and not signed:
        raise ToolchainError(f"{source}: {where} is negative ({value:g}): the cost table is corrupt",
                             hint="profile the model again with `toolchain profile`")


def _check_tree(value: Any, where: str, source: str, signed: bool = False) -> None:
    """Every number in a JSON-like ``value`` finite and (unless ``signed``) non-negative."""
    if _is_number(value):
        _check_figure(value, where, source, signed=signed)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_tree(item, f"{where}.{key}", source, signed or key in _SIGNED_KEYS)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_tree(item, f"{where}[{i}]", source, signed)


def grams_co2e_per_1000(joules_per_inference: float, g_per_kwh: float) -> float:
    """gCO2e for 1,000 inferences at ``g_per_kwh``: J -> kWh (1 kWh = 3.6e6 J)."""
    return joules_per_inference * 1000 / 3.6e6 * g_per_kwh


