"""Per-layer cost tables: where a model's time and energy go on a target, per PyTorch module.

Per-node kernel times come from a separate ORT profiler run (:mod:`toolchain.profiling`); they are
mapped to modules through the node-to-module map the export stored in the model. Energy is attributed
with the ``time-share`` method: the measured net (active) energy per inference times each layer's share
of the profiled kernel time. MACs, parameters and bytes moved come from the ONNX graph with shapes
inferred at the profiled input shapes.
"""

from __future__ import annotations

import csv
import io
import json
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
    def joules_per_inference(self) -> float:
        return self.measurement["joules_per_inference"]["net"]["mean"]

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
                             self.meter.get("name", ""), self.method, self.measurement.get("repeats", ""),
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
            return cls(model=data["model"], target=data["target"], meter=data["meter"],
                       measurement=data["measurement"], profile=data["profile"], rows=rows,
                       versions=data["versions"], method=data["method"], created=data["created"])
        except (KeyError, TypeError) as exc:
            raise ToolchainError(f"{source}: malformed cost table ({exc})") from None

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


def grams_co2e_per_1000(joules_per_inference: float, g_per_kwh: float) -> float:
    """gCO2e for 1,000 inferences at ``g_per_kwh``: J -> kWh (1 kWh = 3.6e6 J)."""
    return joules_per_inference * 1000 / 3.6e6 * g_per_kwh


