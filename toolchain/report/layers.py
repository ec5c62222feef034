"""The report's per-layer section: the costliest modules of the first and the last variant's cost tables,
and where the energy went between them, module by module (kept, absent after, only after, unmapped)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.formats.costs import ONNX_NODE, UNMAPPED, CostTable
from toolchain.report.charts import granularity_note, table_notes
from toolchain.report.inputs import VariantInput
from toolchain.report.metrics import num

TOP_LAYERS = 15

NOTES = [
    "Per-layer energy is attributed, not metered per layer: the net energy per inference times each "
    "module's share of the ORT-profiled kernel time (time-share).",
    "Modules are the PyTorch module paths recovered from each ONNX model's node-to-module map. In an "
    "INT8 model the QuantizeLinear/DequantizeLinear and fused QLinear*/…Integer nodes map back to the "
    "same PyTorch modules where the map resolves them (so rows compare like with like); what it cannot "
    f"resolve is counted under {UNMAPPED}. A module absent after was removed (pruned away entirely) or "
    "fused by ORT's graph optimisations into a neighbour, whose row then carries its time."]


def shown_moves(moves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``where_energy_went`` that the documents and layers.png show: the :data:`TOP_LAYERS`
    costliest modules before, then up to five that only exist after."""
    return ([r for r in moves if r["before_mj"] is not None][:TOP_LAYERS]
            + [r for r in moves if r["before_mj"] is None][:5])


def load_table(v: VariantInput, warnings: list[str]) -> CostTable | None:
    """``v``'s cost table, or None (with a warning when it is there but unreadable)."""
    if v.cost_table is None:
        return None
    try:
        return CostTable.from_dict(v.cost_table, f"cost table of {v.name}")
    except ToolchainError as exc:
        warnings.append(f"{exc}; its per-layer section is left out")
        return None


def table_summary(name: str, t: CostTable, top: int) -> dict[str, Any]:
    """One side of the section: the table's provenance and its ``top`` costliest modules by energy."""
    rows = sorted(t.rows, key=lambda r: r.energy_j_mean, reverse=True)
    try:
        notes = table_notes(t)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):  # an older or partial table
        notes = [f"Energy: {t.energy_kind}, meter {t.meter.get('name')} ({t.meter.get('source')})."]
    return {"variant": name, "energy_kind": t.energy_kind, "method": t.method, "meter": t.meter.get("name"),
            "granularity": t.granularity,
            "joules_per_inference": num(t.measured.joules_per_inference.net.mean),
            "modules": len(t.rows),
            "top": [{"module": r.label, "module_type": r.module_type, "latency_ms": r.latency_ms_mean,
                     "energy_mj": r.energy_j_mean * 1000, "share": r.share} for r in rows[:top]],
            "notes": notes}


def _moves(before: CostTable, after: CostTable) -> list[dict[str, Any]]:
    """Per module, before's costliest first, then the modules only after."""
    b, a = before.by_module(), after.by_module()
    rows = []
    for module, r in sorted(b.items(), key=lambda kv: kv[1].energy_j_mean, reverse=True):
        o = a.get(module)
        status = ("unmapped" if module == UNMAPPED else "kept") if o is not None else "absent after (removed or fused)"
        rows.append({"module": r.label, "status": status, "before_mj": r.energy_j_mean * 1000,
                     "after_mj": None if o is None else o.energy_j_mean * 1000,
                     "delta_mj": (0.0 if o is None else o.energy_j_mean) * 1000 - r.energy_j_mean * 1000,
                     "before_ms": r.latency_ms_mean, "after_ms": None if o is None else o.latency_ms_mean})
    for module, o in sorted(a.items(), key=lambda kv: kv[1].energy_j_mean, reverse=True):
        if module not in b:
            rows.append({"module": o.label, "status": "unmapped" if module == UNMAPPED else "only after",
                         "before_mj": None, "after_mj": o.energy_j_mean * 1000, "delta_mj": o.energy_j_mean * 1000,
                         "before_ms": None, "after_ms": o.latency_ms_mean})
    return rows


def layers(variants: Sequence[VariantInput], warnings: list[str], top: int = TOP_LAYERS) -> dict[str, Any] | None:
    """The section (``layers`` in report.json), or None when neither end has a readable cost table."""
    if not variants:
        return None
    first, last = variants[0], variants[-1]
    before = load_table(first, warnings)
    after = load_table(last, warnings) if len(variants) > 1 else None
    if before is None and after is None:
        return None
    out: dict[str, Any] = {
        "before": table_summary(first.name, before, top) if before else None,
        "after": table_summary(last.name, after, top) if after else None,
        "where_energy_went": [], "totals": None, "notes": list(NOTES)}
    if before is None or after is None:
        why = "only one variant" if len(variants) == 1 else f"no cost table for {(first if before is None else last).name}"
        out["notes"].append(f"The before/after comparison is left out: {why}.")
        return out
    out["where_energy_went"] = _moves(before, after)
    if ONNX_NODE in (before.granularity, after.granularity):
        out["notes"].append(f"{granularity_note(before if before.granularity == ONNX_NODE else after)} Rows of the two "
                            "tables line up by row name (a node name, or a module path in a per-module table), so "
                            "a per-module table and a per-node one share few rows.")
    tb = sum(r.energy_j_mean for r in before.rows) * 1000
    ta = sum(r.energy_j_mean for r in after.rows) * 1000
    out["totals"] = {"before_mj": tb, "after_mj": ta, "delta_mj": ta - tb}
    b, a = before.by_module(), after.by_module()
    shared = sum(1 for m in b if m in a and m != UNMAPPED)
    named = sum(1 for m in b if m != UNMAPPED)
    if named and shared < named / 2:
        out["notes"].append(f"Only {shared} of the baseline's {named} modules appear in {last.name}: its "
                            "architecture differs (e.g. a distilled student), so most per-module deltas compare "
                            "different modules, not the same module before and after.")
    if before.energy_kind != after.energy_kind:
        warnings.append(f"The per-layer tables mix energy kinds: before {before.energy_kind}, after "
                        f"{after.energy_kind}.")
    return out
