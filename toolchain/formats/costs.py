"""Per-layer cost tables: where a model's time and energy go on a target, per PyTorch module or, for a
model without the export's node-to-module map, per ONNX node.

Per-node kernel times (a separate ORT profiler run, :mod:`toolchain.profile.trace`) are mapped to modules
through the node-to-module map the export stored (``granularity`` "module"), or else to the file's ONNX
nodes (``granularity`` "onnx-node": ``module`` holds the node's name, ``module_type`` its op type). A
subgraph an execution provider compiled into one kernel (OpenVINO, TensorRT) is one row, ``fused_by`` set,
``note`` saying which ONNX nodes it covers when that is known. Energy is split by the ``time-share``
method: net energy per inference x each row's share of the profiled kernel time. MACs, parameters and
bytes moved come from the ONNX graph with shapes inferred at the profiled input shapes.

Schema ``toolchain.cost-table`` v2 (v1 tables are upgraded on load, :func:`upgrade_v1`):

* ``measurement.batch`` samples per call; every energy figure (``joules_per_inference``, ``gco2e_per_1000``,
  the rows' ``energy_j_*``) is per inference, one *sample*: a call's joules / batch
  (``measurement.per_inference == "sample"``). ``latency_ms`` and the rows' ``latency_ms_*`` are per *call*
  (one batch); ``latency_ms_per_sample`` is per call / batch. v1 figures were all per call.
* ``granularity``: "module" or "onnx-node" (v1: always "module").
* ``measurement.windows`` is kept, each with ``other_cpu_share`` (other processes' share of all CPUs during
  the window, None: not checked), and ``measurement.cpu_load`` sums the check up.

``measurement`` is the dict :meth:`toolchain.profile.measure.Measurement.to_dict` writes (plus
``gco2e_per_1000``), kept as is so that :meth:`CostTable.to_json` writes it back byte for byte; read it
through :attr:`CostTable.measured`, frozen records whose attributes are the dict's keys
(``table.measured.latency_ms.median_ms`` is ``measurement["latency_ms"]["median_ms"]``). They read
leniently: a missing key (an older or partial table, a comparison column) is None (``()`` for lists),
values are not converted, so callers decide what n/a means.
"""

from __future__ import annotations

import copy
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
from toolchain.formats.measurement import (  # noqa: F401 - re-exported: the records are part of this format
    CarbonStat,
    CpuLoad,
    EnergyStat,
    IdleBaseline,
    LatencyStat,
    MeasurementRecord,
    MeterInfo,
    NetGross,
    WindowRecord,
)

SCHEMA = "toolchain.cost-table"
SCHEMA_VERSION = 2
METHOD = "time-share"
UNMAPPED = "(unmapped)"
MODULE, ONNX_NODE = "module", "onnx-node"  # the two granularities
CSV_COLUMNS = ["rank", "module", "module_type", "onnx_nodes", "kernels", "op_types", "latency_ms_mean", "latency_ms_std",
               "share", "energy_j_mean", "energy_j_std", "energy_kind", "macs", "params", "bytes_moved",
               "fused_by", "note", "input_shapes", "output_shapes", "granularity", "batch",
               "model_sha256", "target", "meter", "method", "repeats", "schema_version"]


@dataclass
class LayerCost:
    """One row: a PyTorch module (or, at ``onnx-node`` granularity, an ONNX node: ``module`` its name,
    ``module_type`` its op type) and what its kernels cost on the target: latency per call, energy per
    inference (one sample). ``fused_by``: the execution provider that ran it as one compiled subgraph
    ("OpenVINO"), with ``note`` saying which ONNX nodes it covers if known; ``input_shapes`` and
    ``output_shapes`` at the profiled shapes (node rows and fused rows; None for an unknown shape)."""

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
    fused_by: str = ""
    note: str = ""
    input_shapes: list[list[int] | None] = field(default_factory=list)
    output_shapes: list[list[int] | None] = field(default_factory=list)

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
    granularity: str = MODULE
    host: dict[str, Any] = field(default_factory=dict)  # core.host.machine_info(), + the Ray node on a cluster
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
        m = self.measured
        shapes = lambda v: " ".join("x".join(map(str, d)) if d is not None else "?" for d in v)  # noqa: E731
        for rank, r in enumerate(self.rows, 1):
            writer.writerow([rank, r.label, r.module_type, " ".join(r.onnx_nodes), r.kernels, " ".join(r.op_types),
                             f"{r.latency_ms_mean:.6g}", f"{r.latency_ms_std:.6g}", f"{r.share:.6g}",
                             f"{r.energy_j_mean:.6g}", f"{r.energy_j_std:.6g}", self.energy_kind, r.macs, r.params,
                             r.bytes_moved, r.fused_by, r.note, shapes(r.input_shapes), shapes(r.output_shapes),
                             self.granularity, "" if m.batch is None else m.batch, self.model.get("sha256", ""),
                             self.target.get("name", ""), self.meter.get("name", ""), self.method,
                             "" if m.repeats is None else m.repeats, self.schema_version])
        return buf.getvalue()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "cost table") -> CostTable:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ToolchainError(f"{source}: not a toolchain cost table (schema {data.get('schema') if isinstance(data, dict) else None!r})")
        if data.get("schema_version") not in (1, SCHEMA_VERSION):
            raise ToolchainError(f"{source}: cost-table schema version {data.get('schema_version')} is not "
                                 f"{SCHEMA_VERSION}", hint="profile the model again with this toolchain")
        try:
            if data["schema_version"] == 1:
                data = upgrade_v1(data)
            rows = [LayerCost(**r) for r in data["rows"]]
            table = cls(model=data["model"], target=data["target"], meter=data["meter"],
                        measurement=data["measurement"], profile=data["profile"], rows=rows,
                        versions=data["versions"], granularity=data.get("granularity", MODULE),
                        host=data.get("host") or {},
                        method=data["method"], created=data["created"])
        except (KeyError, TypeError, AttributeError) as exc:
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
        if self.granularity not in (MODULE, ONNX_NODE):
            raise ToolchainError(f"{source}: malformed cost table (granularity {self.granularity!r} is neither "
                                 f"{MODULE!r} nor {ONNX_NODE!r})")
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


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A v1 table (a copy) as v2: its energy figures were per call of ``measurement.batch`` samples, so the
    per-inference ones (net and gross J, gCO2e, the rows' energy) are divided by the batch; every v1 table
    is per module. A note in ``measurement.notes`` says so."""
    data = copy.deepcopy(data)
    m = data["measurement"]
    batch = m.get("batch") or 1

    def scale(d: Any, keys: tuple[str, ...]) -> None:
        for k in keys if isinstance(d, dict) else ():
            if _is_number(d.get(k)) or isinstance(d.get(k), list):
                d[k] = [x / batch for x in d[k]] if isinstance(d[k], list) else d[k] / batch

    for side in ("net", "gross"):
        scale((m.get("joules_per_inference") or {}).get(side), ("mean", "std", "ci95"))
    scale(m.get("gco2e_per_1000"), ("mean", "ci95"))
    for row in data["rows"]:
        scale(row, ("energy_j_mean", "energy_j_std"))
    m["per_inference"] = "sample"
    m["notes"] = [*m.get("notes", []), f"read from a v1 cost table: energy per call of batch {batch}, divided by "
                  f"{batch} to give energy per inference (one sample)"]
    return {**data, "schema_version": SCHEMA_VERSION, "granularity": MODULE}


def grams_co2e_per_1000(joules_per_inference: float, g_per_kwh: float) -> float:
    """gCO2e for 1,000 inferences at ``g_per_kwh``: J -> kWh (1 kWh = 3.6e6 J)."""
    return joules_per_inference * 1000 / 3.6e6 * g_per_kwh


