"""The sustainability report of a `toolchain pipeline` run: the variants side by side (baseline, each single
technique, the full pipeline) as a SuComp-style comparison table, the energy-aware pruning paper's metrics,
the Green Score, the per-layer cost before and after, plots, and where every figure came from.

:func:`build_report` is pure: it turns the pipeline's ``run`` dict into a JSON-able report.
:func:`markdown` and :func:`html` render it (the HTML is self-contained, PNGs embedded), :func:`figures`
draws its PNGs, and :func:`write_report` writes ``report.json``, ``report.md``, ``report.html`` and the PNGs
atomically (:func:`toolchain.io.write_files`).

Definitions (the papers leave them ambiguous; these are ours, and the report states them):

- reductions: ``(1 - x / x_baseline) * 100`` of net J/inference (energy), median latency, and gCO2e per
  1,000 inferences (carbon); positive means less than the baseline.
- compression: both ``params_x = params_baseline / params`` and ``bytes_x = size_baseline / size`` (SuComp
  defines it by parameter count yet reports about 6x for INT8, which only a bytes-like ratio can give).
- energy-aware pruning paper (Eqs. 4-8): ARP = metric / metric_baseline * 100; EPR = (1 - J / J_baseline) * 100
  with *energy per inference* as its "Power"; LSI = latency_baseline / latency (x, median latency);
  "MSE (storage)" = (1 - size / size_baseline) * 100 (storage efficiency, not mean squared error);
  CFA = (1 - gCO2e / gCO2e_baseline) * 100.
- Green Score = metric / (gCO2e per 1,000 inferences), in "points per gCO2e/1k inferences"; like the paper,
  no normalisation. Comparable only at the same workload and carbon intensity; ``green_score_x`` is its ratio
  to the baseline's.

Any ratio whose inputs are missing, or whose denominator is zero, is ``None`` (shown as "n/a").

``report.json`` (schema ``toolchain.report`` v1) keys:

- ``schema``, ``schema_version``, ``title``, ``model`` {source, sha256, task}, ``target`` {name,
  carbon_g_per_kwh, carbon_source}, ``metric`` {name, unit: "points", higher_is_better: true}
- ``baseline`` / ``final``: names of the first and last variants
- ``energy_kinds``: the meter kinds of the measured variants ("measured", "estimated"); ``estimated``: bool
- ``variants``: one dict per variant, in the run's order: ``name``, ``onnx``, ``measured`` (bool), ``status``,
  ``metric``, ``metric_delta_points``, ``params``, ``size_bytes``, ``compression`` {params_x, bytes_x},
  ``joules_per_inference`` {mean, std, ci95, n, cv_pct} (net of idle) or None, ``latency_ms`` {median,
  mean, std, p10, p90, ci95, runs} or None, ``gco2e_per_1000`` {mean, ci95, intensity_g_per_kwh,
  intensity_source, computed} or None, ``reduction_pct`` {energy, latency, carbon}, ``paper_metrics``
  {arp_pct, epr_pct, lsi_x, mse_storage_pct, cfa_pct} (None for the baseline), ``green_score``,
  ``green_score_x``, ``provenance`` {meter, meter_kind, meter_source, repeats, idle_watts, idle_seconds,
  j_cv_pct, j_ci95, latency_runs, intensity_g_per_kwh, intensity_source, target} or None
- ``green_score`` {unit, definition}; ``definitions`` {name: text}
- ``headline`` (a sentence) and ``headline_facts`` {energy_reduction_pct, latency_reduction_pct,
  metric_delta_points, beats_every_single_technique (bool or None), beaten, not_beaten, not_compared,
  ci_overlap}
- ``layers``: None or {``before``/``after``: None or {variant, energy_kind, method, meter,
  joules_per_inference, modules, top: [{module, module_type, latency_ms, energy_mj, share}], notes},
  ``where_energy_went``: [{module, status, before_mj, after_mj, delta_mj, before_ms, after_ms}],
  ``totals`` {before_mj, after_mj, delta_mj}, ``notes``}
- ``pareto``: None or {energy_kind, points: [{label, metric, joules, latency_ms, config, front_energy,
  front_latency}]}
- ``stages``, ``notes`` (from the run), ``warnings`` (ESTIMATED energy, mixed meters, unreadable tables ...)
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.formats.costs import UNMAPPED, CostTable, grams_co2e_per_1000

SCHEMA = "toolchain.report"
SCHEMA_VERSION = 1
TOP_LAYERS = 15
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

_NA = "n/a"


# ----------------------------------------------------------------------------------------------- arithmetic

def _num(x: Any) -> float | None:
    """``x`` as a finite float, else None."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ratio(a: Any, b: Any) -> float | None:
    a, b = _num(a), _num(b)
    if a is None or b is None or b == 0:
        return None
    return _num(a / b)


def _size_ratio(a: Any, b: Any) -> float | None:
    """``a / b`` of two sizes (params, bytes, latency): None unless both are positive."""
    a, b = _num(a), _num(b)
    return None if a is None or b is None or a <= 0 or b <= 0 else a / b


def _reduction_pct(x: Any, base: Any) -> float | None:
    r = _ratio(x, base)
    return None if r is None else (1 - r) * 100


def _pct_of(x: Any, base: Any) -> float | None:
    r = _ratio(x, base)
    return None if r is None else r * 100


# ----------------------------------------------------------------------------------------------- building

def _measured(v: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """The figures of one variant's measurement (None where it is missing)."""
    m = v.get("measurement") or None
    out: dict[str, Any] = {"joules_per_inference": None, "latency_ms": None, "gco2e_per_1000": None,
                           "provenance": None, "kind": None}
    if not isinstance(m, dict):
        return out
    net = ((m.get("joules_per_inference") or {}).get("net")) or {}
    if _num(net.get("mean")) is not None:
        out["joules_per_inference"] = {"mean": _num(net.get("mean")), "std": _num(net.get("std")),
                                       "ci95": net.get("ci95"), "n": net.get("n"), "cv_pct": _num(net.get("cv_pct"))}
    lat = m.get("latency_ms") or {}
    median = _num(lat.get("median_ms"))
    if median is None:
        median = _num(lat.get("mean_ms"))
    if median is not None:
        out["latency_ms"] = {"median": median, "mean": _num(lat.get("mean_ms")), "std": _num(lat.get("std_ms")),
                             "p10": _num(lat.get("p10_ms")), "p90": _num(lat.get("p90_ms")),
                             "ci95": lat.get("ci95_ms"), "runs": lat.get("runs")}
    co2 = m.get("gco2e_per_1000") or {}
    if _num(co2.get("mean")) is not None:
        out["gco2e_per_1000"] = {"mean": _num(co2["mean"]), "ci95": co2.get("ci95"),
                                 "intensity_g_per_kwh": co2.get("intensity_g_per_kwh"),
                                 "intensity_source": co2.get("intensity_source"), "computed": False}
    elif out["joules_per_inference"] and _num(target.get("carbon_g_per_kwh")) is not None:
        j = out["joules_per_inference"]
        g = target["carbon_g_per_kwh"]
        ci = j["ci95"]
        out["gco2e_per_1000"] = {
            "mean": grams_co2e_per_1000(j["mean"], g),
            "ci95": [grams_co2e_per_1000(x, g) for x in ci] if isinstance(ci, list | tuple) else None,
            "intensity_g_per_kwh": g, "intensity_source": target.get("carbon_source"), "computed": True}
    meter = m.get("meter") or {}
    idle = m.get("idle_baseline") or {}
    kind = meter.get("kind") or (m.get("joules_per_inference") or {}).get("kind")
    out["kind"] = kind
    co2d = out["gco2e_per_1000"] or {}
    out["provenance"] = {
        "meter": meter.get("name"), "meter_kind": kind, "meter_source": meter.get("source"),
        "repeats": m.get("repeats"), "idle_watts": _num(idle.get("watts")), "idle_seconds": _num(idle.get("seconds")),
        "j_cv_pct": _num(net.get("cv_pct")), "j_ci95": net.get("ci95"),
        "latency_runs": lat.get("runs"), "intensity_g_per_kwh": co2d.get("intensity_g_per_kwh"),
        "intensity_source": co2d.get("intensity_source"), "target": target.get("name")}
    return out


def _variant(v: dict[str, Any], base: dict[str, Any] | None, target: dict[str, Any]) -> dict[str, Any]:
    f = _measured(v, target)
    j = (f["joules_per_inference"] or {}).get("mean")
    lat = (f["latency_ms"] or {}).get("median")
    co2 = (f["gco2e_per_1000"] or {}).get("mean")
    metric = _num(v.get("metric"))
    ref = base  # None: this is the baseline, compared with itself
    b = ref["_values"] if ref else {"metric": metric, "j": j, "lat": lat, "co2": co2,
                                    "params": v.get("params"), "size": v.get("size_bytes")}
    green = _ratio(metric, co2) if (_num(co2) or 0) > 0 else None
    measured = f["joules_per_inference"] is not None
    out = {
        "name": str(v.get("name", "?")), "onnx": v.get("onnx"), "measured": measured,
        "status": "measured" if measured else (v.get("status") or "not measured"),
        "metric": metric,
        "metric_delta_points": None if metric is None or b["metric"] is None else metric - b["metric"],
        "params": v.get("params"), "size_bytes": v.get("size_bytes"),
        "compression": {"params_x": _size_ratio(b["params"], v.get("params")),
                        "bytes_x": _size_ratio(b["size"], v.get("size_bytes"))},
        "joules_per_inference": f["joules_per_inference"], "latency_ms": f["latency_ms"],
        "gco2e_per_1000": f["gco2e_per_1000"],
        "reduction_pct": {"energy": _reduction_pct(j, b["j"]), "latency": _reduction_pct(lat, b["lat"]),
                          "carbon": _reduction_pct(co2, b["co2"])},
        "paper_metrics": None if ref is None else {
            "arp_pct": _pct_of(metric, b["metric"]), "epr_pct": _reduction_pct(j, b["j"]),
            "lsi_x": _size_ratio(b["lat"], lat), "mse_storage_pct": _reduction_pct(v.get("size_bytes"), b["size"]),
            "cfa_pct": _reduction_pct(co2, b["co2"])},
        "green_score": green,
        "green_score_x": None,
        "provenance": f["provenance"],
        "_values": {"metric": metric, "j": j, "lat": lat, "co2": co2, "params": v.get("params"),
                    "size": v.get("size_bytes")},
    }
    if ref is not None:
        out["green_score_x"] = _ratio(green, ref["green_score"])
    elif green is not None:
        out["green_score_x"] = 1.0
    return out


def _load_table(v: dict[str, Any], warnings: list[str]) -> CostTable | None:
    data = v.get("cost_table")
    if data is None:
        return None
    try:
        return CostTable.from_dict(data, f"cost table of {v.get('name')}")
    except ToolchainError as exc:
        warnings.append(f"{exc}; its per-layer section is left out")
        return None


def _table_summary(name: str, t: CostTable, top: int) -> dict[str, Any]:
    from toolchain.report.charts import table_notes

    rows = sorted(t.rows, key=lambda r: r.energy_j_mean, reverse=True)
    try:
        notes = table_notes(t)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):  # an older or partial table
        notes = [f"Energy: {t.energy_kind}, meter {t.meter.get('name')} ({t.meter.get('source')})."]
    return {"variant": name, "energy_kind": t.energy_kind, "method": t.method, "meter": t.meter.get("name"),
            "joules_per_inference": _num(t.measurement.get("joules_per_inference", {}).get("net", {}).get("mean")),
            "modules": len(t.rows),
            "top": [{"module": r.label, "module_type": r.module_type, "latency_ms": r.latency_ms_mean,
                     "energy_mj": r.energy_j_mean * 1000, "share": r.share} for r in rows[:top]],
            "notes": notes}


def _layers(variants: list[dict[str, Any]], warnings: list[str], top: int) -> dict[str, Any] | None:
    if not variants:
        return None
    first, last = variants[0], variants[-1]
    before = _load_table(first, warnings)
    after = _load_table(last, warnings) if len(variants) > 1 else None
    if before is None and after is None:
        return None
    out: dict[str, Any] = {
        "before": _table_summary(str(first.get("name")), before, top) if before else None,
        "after": _table_summary(str(last.get("name")), after, top) if after else None,
        "where_energy_went": [], "totals": None, "notes": [
            "Per-layer energy is attributed, not metered per layer: the net energy per inference times each "
            "module's share of the ORT-profiled kernel time (time-share).",
            "Modules are the PyTorch module paths recovered from each ONNX model's node-to-module map. In an "
            "INT8 model the QuantizeLinear/DequantizeLinear and fused QLinear*/…Integer nodes map back to the "
            "same PyTorch modules where the map resolves them (so rows compare like with like); what it cannot "
            f"resolve is counted under {UNMAPPED}. A module absent after was removed (pruned away entirely) or "
            "fused by ORT's graph optimisations into a neighbour, whose row then carries its time."]}
    if before is None or after is None:
        why = ("only one variant" if len(variants) == 1 else
               f"no cost table for {(first if before is None else last).get('name')}")
        out["notes"].append(f"The before/after comparison is left out: {why}.")
        return out
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
    out["where_energy_went"] = rows
    tb = sum(r.energy_j_mean for r in before.rows) * 1000
    ta = sum(r.energy_j_mean for r in after.rows) * 1000
    out["totals"] = {"before_mj": tb, "after_mj": ta, "delta_mj": ta - tb}
    shared = sum(1 for m in b if m in a and m != UNMAPPED)
    named = sum(1 for m in b if m != UNMAPPED)
    if named and shared < named / 2:
        out["notes"].append(f"Only {shared} of the baseline's {named} modules appear in {last.get('name')}: its "
                            "architecture differs (e.g. a distilled student), so most per-module deltas compare "
                            "different modules, not the same module before and after.")
    if before.energy_kind != after.energy_kind:
        warnings.append(f"The per-layer tables mix energy kinds: before {before.energy_kind}, after "
                        f"{after.energy_kind}.")
    return out


def pareto_front(points: list[dict[str, Any]], key: str) -> set[int]:
    """Indices of the points on the Pareto front of (higher metric, lower ``key``)."""
    ok = [(i, p["metric"], p[key]) for i, p in enumerate(points) if p["metric"] is not None and p[key] is not None]
    front = set()
    for i, m, x in ok:
        if not any((m2 >= m and x2 <= x) and (m2 > m or x2 < x) for _, m2, x2 in ok):
            front.add(i)
    return front


def _pareto(pareto: list[dict[str, Any]] | None, kind: str) -> dict[str, Any] | None:
    if not pareto:
        return None
    pts = [{"label": str(p.get("label", "")), "metric": _num(p.get("metric")), "joules": _num(p.get("joules")),
            "latency_ms": _num(p.get("latency_ms")), "config": p.get("config") or {}} for p in pareto]
    fe, fl = pareto_front(pts, "joules"), pareto_front(pts, "latency_ms")
    for i, p in enumerate(pts):
        p["front_energy"], p["front_latency"] = i in fe, i in fl
    return {"energy_kind": kind, "points": pts}


def _fmt(x: Any, spec: str = ".4g", suffix: str = "") -> str:
    x = _num(x)
    return _NA if x is None else f"{x:{spec}}{suffix}"


def _fmt_big(x: Any) -> str:
    """Four significant digits without an exponent for large values (Green Scores can be large)."""
    x = _num(x)
    if x is None:
        return _NA
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _kind_label(kinds) -> str:
    ks = sorted({k for k in kinds if k})
    return "/".join("ESTIMATED" if k == "estimated" else k for k in ks) if ks else _NA


def _headline(variants: list[dict[str, Any]], metric_name: str) -> tuple[str, dict[str, Any]]:
    if len(variants) < 2:
        return ("No variants in this run." if not variants else
                f"Only one variant ({variants[0]['name']}); there is nothing to compare it with."), {}
    base, last = variants[0], variants[-1]
    singles = variants[1:-1]
    lj = last["_values"]["j"]
    beaten, not_beaten, not_compared, overlap = [], [], [], []
    lci = (last["joules_per_inference"] or {}).get("ci95")
    for v in singles:
        j = v["_values"]["j"]
        if lj is None or j is None:
            not_compared.append(v["name"])
            continue
        (beaten if lj < j else not_beaten).append(v["name"])
        ci = (v["joules_per_inference"] or {}).get("ci95")
        if isinstance(ci, list | tuple) and isinstance(lci, list | tuple) and len(ci) == len(lci) == 2 \
                and ci[0] <= lci[1] and lci[0] <= ci[1]:
            overlap.append(v["name"])
    beats = None if lj is None or not singles or not_compared else not not_beaten
    facts = {"energy_reduction_pct": last["reduction_pct"]["energy"],
             "latency_reduction_pct": last["reduction_pct"]["latency"],
             "metric_delta_points": last["metric_delta_points"],
             "beats_every_single_technique": beats, "beaten": beaten, "not_beaten": not_beaten,
             "not_compared": not_compared, "ci_overlap": overlap}
    kind = (last["provenance"] or {}).get("meter_kind")
    kind_txt = "ESTIMATED" if kind == "estimated" else (kind or "not measured")
    bv, lv = base["_values"], last["_values"]
    s = (f"{last['name']} vs {base['name']}: net energy per inference {_signed_reduction(facts['energy_reduction_pct'])} "
         f"({_fmt(_mj(bv['j']))} → {_fmt(_mj(lv['j']))} mJ, {kind_txt}), median latency "
         f"{_signed_reduction(facts['latency_reduction_pct'])} ({_fmt(bv['lat'])} → {_fmt(lv['lat'])} ms), "
         f"{metric_name} {_fmt(facts['metric_delta_points'], '+.2f')} points "
         f"({_fmt(bv['metric'], '.2f')} → {_fmt(lv['metric'], '.2f')}).")
    if singles and lj is None:
        s += f" {last['name']} has no energy measurement, so it cannot be compared with the single techniques."
    elif singles and beats:
        s += f" It uses less energy per inference than every single technique ({', '.join(beaten)})."
    elif singles:
        if not_beaten:
            s += f" It does NOT beat every single technique on J/inference: {', '.join(not_beaten)} uses less."
        elif beaten:
            s += f" It uses less energy per inference than {', '.join(beaten)}."
        if not_compared:
            s += (f" Whether it beats every single technique is undecided: {', '.join(not_compared)} has no energy "
                  "measurement.")
    if overlap and lj is not None:
        s += f" The 95% CIs of J/inference overlap with {', '.join(overlap)}, so that difference is not resolved."
    return s, facts


def _signed_reduction(pct: float | None) -> str:
    if pct is None:
        return "change n/a"
    return f"-{pct:.1f}%" if pct >= 0 else f"+{-pct:.1f}% (an increase)"


def _mj(j: float | None) -> float | None:
    return None if j is None else j * 1000


def build_report(run: dict[str, Any], top: int = TOP_LAYERS) -> dict[str, Any]:
    """The report of a pipeline ``run`` (see the module docstring for both shapes); pure, JSON-able."""
    target = dict(run.get("target") or {})
    raw = list(run.get("variants") or [])
    warnings: list[str] = []
    variants: list[dict[str, Any]] = []
    for i, v in enumerate(raw):
        variants.append(_variant(v, variants[0] if i else None, target))
    metric_name = str(run.get("metric_name") or "metric")
    kinds = [(v["provenance"] or {}).get("meter_kind") for v in variants if v["measured"]]
    estimated = [v["name"] for v in variants if (v["provenance"] or {}).get("meter_kind") == "estimated"]
    if estimated:
        src = {(v["provenance"] or {}).get("meter_source") for v in variants if v["name"] in estimated}
        warnings.append(f"ENERGY IS ESTIMATED, NOT MEASURED for {', '.join(estimated)} (source: "
                        f"{'; '.join(sorted(str(s) for s in src))}): every energy, carbon and Green Score figure "
                        "derived from it is an estimate.")
    if len(set(kinds)) > 1:
        warnings.append("Variants were measured with different meter kinds (" + _kind_label(kinds) + "); their "
                        "energy figures are not comparable.")
    meters = {(v["provenance"] or {}).get("meter") for v in variants if v["measured"]}
    if len(meters) > 1:
        warnings.append(f"Variants were measured with different meters ({', '.join(sorted(map(str, meters)))}).")
    for v in variants:
        if not v["measured"]:
            warnings.append(f"{v['name']}: no energy measurement ({v['status']}); its figures are n/a.")
        g = (v["gco2e_per_1000"] or {}).get("intensity_g_per_kwh")
        if g is not None and _num(target.get("carbon_g_per_kwh")) is not None and _num(g) != _num(
                target["carbon_g_per_kwh"]):
            warnings.append(f"{v['name']}: carbon computed at {g} gCO2e/kWh, the target says "
                            f"{target['carbon_g_per_kwh']}.")
    headline, facts = _headline(variants, metric_name)
    layers = _layers(raw, warnings, top)
    report = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "title": str(run.get("title") or "Sustainability report"),
        "model": dict(run.get("model") or {}), "target": target,
        "metric": {"name": metric_name, "unit": "points", "higher_is_better": True},
        "baseline": variants[0]["name"] if variants else None, "final": variants[-1]["name"] if variants else None,
        "energy_kinds": sorted({k for k in kinds if k}), "estimated": bool(estimated),
        "variants": [{k: val for k, val in v.items() if k != "_values"} for v in variants],
        "green_score": {"unit": GREEN_SCORE_UNIT, "definition": DEFINITIONS["Green Score"]},
        "definitions": dict(DEFINITIONS),
        "headline": headline, "headline_facts": facts,
        "layers": layers,
        "pareto": _pareto(run.get("pareto"), _kind_label(kinds)),
        "stages": list(run.get("stages") or []), "notes": [str(n) for n in run.get("notes") or []],
        "warnings": warnings,
    }
    return report


# ----------------------------------------------------------------------------------------------- figures

def _energy_axis(kinds) -> str:
    return f"net energy per inference, mJ ({_kind_label(kinds)})"


def _variants_png(report: dict[str, Any]) -> bytes:
    from toolchain.report.charts import figure_png, pyplot, short_label

    plt = pyplot()
    vs = report["variants"]
    names = [short_label(v["name"], 22) for v in vs]
    x = list(range(len(vs)))
    fig, axes = plt.subplots(1, 3, figsize=(min(18, max(10, 2.7 * len(vs))), 4))
    kinds = report["energy_kinds"]

    def bars(ax, values, err, ylabel, color, hatches=None):
        shown = [0.0 if v is None else v for v in values]
        ax.bar(x, shown, yerr=err, color=color, ecolor="#444", hatch=None)
        if hatches:
            for patch, h in zip(ax.patches, hatches, strict=True):
                patch.set_hatch(h)
        for i, v in enumerate(values):
            top = 0 if v is None else v + (err[1][i] if err else 0.0)
            ax.text(i, top, _NA if v is None else f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)

    j = [_mj((v["joules_per_inference"] or {}).get("mean")) for v in vs]
    jerr = [[0.0] * len(vs), [0.0] * len(vs)]
    for i, v in enumerate(vs):
        ci = (v["joules_per_inference"] or {}).get("ci95")
        if j[i] is not None and isinstance(ci, list | tuple) and len(ci) == 2:
            jerr[0][i] = max(0.0, j[i] - ci[0] * 1000)
            jerr[1][i] = max(0.0, ci[1] * 1000 - j[i])
    hatches = ["//" if (v["provenance"] or {}).get("meter_kind") == "estimated" else "" for v in vs]
    bars(axes[0], j, jerr, _energy_axis(kinds), "#3b7dd8", hatches)
    axes[0].set_title("energy per inference (bars: 95% CI; hatched: ESTIMATED)", fontsize=9)
    lat = [(v["latency_ms"] or {}).get("median") for v in vs]
    lerr = [[0.0] * len(vs), [0.0] * len(vs)]
    for i, v in enumerate(vs):
        lm = v["latency_ms"] or {}
        if lat[i] is not None and lm.get("p10") is not None and lm.get("p90") is not None:
            lerr[0][i] = max(0.0, lat[i] - lm["p10"])
            lerr[1][i] = max(0.0, lm["p90"] - lat[i])
    bars(axes[1], lat, lerr, "latency per inference, ms (median; bars p10-p90)", "#888")
    axes[1].set_title("latency", fontsize=9)
    bars(axes[2], [v["metric"] for v in vs], None, f"{report['metric']['name']} (higher is better)", "#4a9d5b")
    axes[2].set_title("quality", fontsize=9)
    fig.suptitle(f"{report['title']}: variants on {report['target'].get('name', '?')}", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def _pareto_png(report: dict[str, Any]) -> bytes:
    from toolchain.report.charts import figure_png, pyplot, short_label

    plt = pyplot()
    pts = report["pareto"]["points"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [(axes[0], "joules", "front_energy", 1000.0, _energy_axis([report["pareto"]["energy_kind"]]),
               lambda v: _mj((v["joules_per_inference"] or {}).get("mean"))),
              (axes[1], "latency_ms", "front_latency", 1.0, "latency per inference, ms",
               lambda v: (v["latency_ms"] or {}).get("median"))]
    for ax, key, flag, scale, xlabel, of_variant in panels:
        off = [(p[key] * scale, p["metric"]) for p in pts if not p[flag] and p[key] is not None
               and p["metric"] is not None]
        on = sorted((p[key] * scale, p["metric"], p["label"]) for p in pts if p[flag])
        if off:
            ax.scatter(*zip(*off, strict=True), color="#bbb", s=18, label="dominated")
        if on:
            xs, ys, labels = zip(*on, strict=True)
            ax.step(xs, ys, where="post", color="#d8553b", lw=1)
            ax.scatter(xs, ys, color="#d8553b", s=28, zorder=3, label="Pareto front")
            for xv, yv, lab in on:
                ax.annotate(short_label(lab, 24), (xv, yv), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for v in report["variants"]:
            xv = of_variant(v)
            if xv is not None and v["metric"] is not None:
                ax.scatter([xv], [v["metric"]], marker="*", s=90, color="#3b7dd8", zorder=4)
                ax.annotate(short_label(v["name"], 24), (xv, v["metric"]), fontsize=7, color="#3b7dd8",
                            xytext=(3, -9), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{report['metric']['name']} (higher is better)")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_title("metric vs energy (stars: the report's variants)", fontsize=9)
    axes[1].set_title("metric vs latency", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _layers_png(report: dict[str, Any]) -> bytes:
    from toolchain.report.charts import figure_png, pyplot, short_label

    plt = pyplot()
    layers = report["layers"]
    rows = [r for r in layers["where_energy_went"] if r["before_mj"] is not None][:TOP_LAYERS]
    rows += [r for r in layers["where_energy_went"] if r["before_mj"] is None][:5]
    rows = rows[::-1]
    fig, ax = plt.subplots(figsize=(9.5, 0.36 * len(rows) + 1.8))
    y = list(range(len(rows)))
    before = [r["before_mj"] or 0.0 for r in rows]
    after = [r["after_mj"] or 0.0 for r in rows]
    b, a = layers["before"], layers["after"]
    ax.barh([i + 0.2 for i in y], before, height=0.4, color="#aaa", label=f"before: {b['variant']}")
    ax.barh([i - 0.2 for i in y], after, height=0.4, color="#3b7dd8", label=f"after: {a['variant']}")
    for i, r in enumerate(rows):
        if r["after_mj"] is None:
            ax.text(0, i - 0.2, " removed/fused", va="center", fontsize=7, color="#d8553b")
    ax.set_yticks(y, [short_label(r["module"], 40) for r in rows], fontsize=8)
    ax.set_xlabel(f"energy per inference, mJ (before {_kind_label([b['energy_kind']])}, after "
                  f"{_kind_label([a['energy_kind']])}; {b['method']} attribution)")
    ax.set_title("where the energy went: per module, before and after", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return figure_png(fig)


def _planned(report: dict[str, Any]) -> list[tuple[str, str, Callable[[dict[str, Any]], bytes]]]:
    """(file name, caption, drawer) of each figure the report has."""
    plan = []
    if report["variants"]:
        plan.append(("variants.png", "Energy, latency and quality per variant", _variants_png))
    if report["pareto"]:
        plan.append(("pareto.png", "Pareto front of the sweep: metric vs energy and vs latency", _pareto_png))
    layers = report["layers"]
    if layers and layers["before"] and layers["after"]:
        plan.append(("layers.png", "Where the energy went, per module, before and after", _layers_png))
    return plan


def figures(report: dict[str, Any]) -> dict[str, bytes]:
    """The report's PNGs by file name (matplotlib, headless)."""
    return {name: draw(report) for name, _caption, draw in _planned(report)}


# ----------------------------------------------------------------------------------------------- documents

def _blocks(report: dict[str, Any]) -> list[tuple]:
    """The document as blocks: ("h", level, text), ("p", text), ("warn", text), ("list", items),
    ("table", header, rows), ("img", file name, caption); rendered by :func:`markdown` and :func:`html`."""
    vs = report["variants"]
    metric = report["metric"]["name"]
    model, target = report["model"], report["target"]
    B: list[tuple] = [("h", 1, report["title"]), ("p", report["headline"])]
    B += [("warn", w) for w in report["warnings"]]
    B.append(("p", f"Model {model.get('source', _NA)} (task {model.get('task', _NA)}, sha256 "
                   f"{str(model.get('sha256') or _NA)[:16]}); target {target.get('name', _NA)}, carbon intensity "
                   f"{target.get('carbon_g_per_kwh', _NA)} gCO2e/kWh ({target.get('carbon_source', _NA)}). "
                   f"Energy: {_kind_label(report['energy_kinds'])}, net of the idle baseline."))
    plan = {name: caption for name, caption, _ in _planned(report)}

    B.append(("h", 2, "Comparison (SuComp Table 2 style)"))
    header = ["variant", metric, "Δ points", "params x", "bytes x", "net mJ/inference", "CV %", "n",
              "latency ms (median)", "gCO2e/1k inferences", "energy red. %", "latency red. %", "carbon red. %",
              "energy"]
    rows = []
    for v in vs:
        j, lat, co2, red = v["joules_per_inference"] or {}, v["latency_ms"] or {}, v["gco2e_per_1000"] or {}, \
            v["reduction_pct"]
        kind = (v["provenance"] or {}).get("meter_kind")
        rows.append([v["name"], _fmt(v["metric"], ".2f"), _fmt(v["metric_delta_points"], "+.2f"),
                     _fmt(v["compression"]["params_x"], ".2f"), _fmt(v["compression"]["bytes_x"], ".2f"),
                     _fmt(_mj(j.get("mean"))), _fmt(j.get("cv_pct"), ".1f"), str(j.get("n", _NA)) if j else _NA,
                     _fmt(lat.get("median")), _fmt(co2.get("mean")), _fmt(red["energy"], ".1f"),
                     _fmt(red["latency"], ".1f"), _fmt(red["carbon"], ".1f"),
                     "ESTIMATED" if kind == "estimated" else (kind or _NA)])
    B.append(("table", header, rows))
    B.append(("p", f"Reductions: {DEFINITIONS['reduction_pct']}. Compression: params x = "
                   f"{DEFINITIONS['compression params_x']}; bytes x = {DEFINITIONS['compression bytes_x']}."))
    if "variants.png" in plan:
        B.append(("img", "variants.png", plan["variants.png"]))

    B.append(("h", 2, "Energy-aware pruning paper metrics (Eqs. 4-8)"))
    header = ["variant", "ARP %", "EPR % (energy/inference)", "LSI x", "MSE (storage) %", "CFA %"]
    rows = [[v["name"], _fmt(p["arp_pct"], ".2f"), _fmt(p["epr_pct"], ".1f"), _fmt(p["lsi_x"], ".2f"),
             _fmt(p["mse_storage_pct"], ".1f"), _fmt(p["cfa_pct"], ".1f")]
            for v in vs[1:] if (p := v["paper_metrics"])]
    B.append(("table", header, rows))
    B.append(("list", [f"{k}: {DEFINITIONS[k]}" for k in ("ARP", "EPR", "LSI", "MSE (storage)", "CFA")]))

    B.append(("h", 2, "Green Score"))
    B.append(("table", ["variant", metric, "gCO2e/1k inferences", f"Green Score ({GREEN_SCORE_UNIT})",
                        "x baseline"],
              [[v["name"], _fmt(v["metric"], ".2f"), _fmt((v["gco2e_per_1000"] or {}).get("mean")),
                _fmt_big(v["green_score"]), _fmt(v["green_score_x"], ".2f")] for v in vs]))
    B.append(("p", DEFINITIONS["Green Score"] + "."))

    if report["pareto"]:
        B.append(("h", 2, "Pareto front"))
        pts = report["pareto"]["points"]
        B.append(("table", ["point", metric, f"mJ/inference ({report['pareto']['energy_kind']})", "latency ms",
                            "front (energy)", "front (latency)", "config"],
                  [[p["label"], _fmt(p["metric"], ".2f"), _fmt(_mj(p["joules"])), _fmt(p["latency_ms"]),
                    "yes" if p["front_energy"] else "", "yes" if p["front_latency"] else "",
                    json.dumps(p["config"], sort_keys=True)] for p in pts]))
        B.append(("p", "A point is on the front when no other point has at least its metric and at most its "
                       "energy (or latency), and is better in one of the two."))
        if "pareto.png" in plan:
            B.append(("img", "pareto.png", plan["pareto.png"]))

    layers = report["layers"]
    if layers:
        B.append(("h", 2, "Per-layer cost: before and after"))
        for side in ("before", "after"):
            t = layers[side]
            if not t:
                continue
            B.append(("h", 3, f"{side.capitalize()}: {t['variant']} ({_fmt(_mj(t['joules_per_inference']))} "
                              f"mJ/inference, {_kind_label([t['energy_kind']])}, {t['modules']} modules)"))
            B.append(("table", ["module", "type", "latency ms", f"energy mJ ({_kind_label([t['energy_kind']])})",
                                "share"],
                      [[r["module"], r["module_type"].rsplit(".", 1)[-1], _fmt(r["latency_ms"]),
                        _fmt(r["energy_mj"]), _fmt(r["share"] * 100, ".1f", "%")] for r in t["top"]]))
            B.append(("list", t["notes"]))
        if layers["where_energy_went"]:
            B.append(("h", 3, "Where the energy went"))
            moves = layers["where_energy_went"]
            shown = [r for r in moves if r["before_mj"] is not None][:TOP_LAYERS]
            shown += [r for r in moves if r["before_mj"] is None][:5]
            removed = [r for r in moves if r["after_mj"] is None]
            shown += [r for r in removed if r not in shown]
            tot = layers["totals"]
            rows = [[r["module"], r["status"], _fmt(r["before_mj"]), _fmt(r["after_mj"]), _fmt(r["delta_mj"], "+.4g"),
                     _fmt(r["before_ms"]), _fmt(r["after_ms"])] for r in shown]
            rows.append(["all modules", "total", _fmt(tot["before_mj"]), _fmt(tot["after_mj"]),
                         _fmt(tot["delta_mj"], "+.4g"), "", ""])
            B.append(("table", ["module", "status", "before mJ", "after mJ", "Δ mJ", "before ms", "after ms"], rows))
            if len(shown) < len(moves):
                B.append(("p", f"{len(moves) - len(shown)} more modules in report.json "
                               "(layers.where_energy_went)."))
        B.append(("list", layers["notes"]))
        if "layers.png" in plan:
            B.append(("img", "layers.png", plan["layers.png"]))

    B.append(("h", 2, "Provenance"))
    items = []
    for v in vs:
        p = v["provenance"]
        if not p:
            items.append(f"{v['name']}: no measurement ({v['status']}); every figure derived from it is n/a.")
            continue
        kind = "ESTIMATED (not measured)" if p["meter_kind"] == "estimated" else (p["meter_kind"] or _NA)
        ci = p["j_ci95"]
        ci_txt = (f"{_fmt(_mj(ci[0]))}-{_fmt(_mj(ci[1]))} mJ" if isinstance(ci, list | tuple) and len(ci) == 2
                  else _NA)
        lat = v["latency_ms"] or {}
        co2 = v["gco2e_per_1000"] or {}
        items.append(
            f"{v['name']}: energy {kind} by meter {p['meter'] or _NA} ({p['meter_source'] or _NA}); "
            f"{p['repeats'] if p['repeats'] is not None else _NA} windows, J/inference CV {_fmt(p['j_cv_pct'], '.1f')}%, "
            f"95% CI {ci_txt}; idle baseline {_fmt(p['idle_watts'], '.3g')} W over {_fmt(p['idle_seconds'], '.3g')} s "
            f"subtracted; latency median of {lat.get('runs', _NA)} runs (p10-p90 {_fmt(lat.get('p10'))}-"
            f"{_fmt(lat.get('p90'))} ms); carbon at {p['intensity_g_per_kwh'] if p['intensity_g_per_kwh'] is not None else _NA} "
            f"gCO2e/kWh ({p['intensity_source'] or _NA}{', computed here from J x intensity' if co2.get('computed') else ''}); "
            f"target {p['target'] or _NA}; model {v['onnx'] or _NA}.")
    B.append(("list", items))

    if report["stages"]:
        B.append(("h", 2, "Pipeline stages"))
        B.append(("table", ["stage", "status", "seconds"],
                  [[str(s.get("name", "")), str(s.get("status", "")), _fmt(s.get("seconds"), ".1f")]
                   for s in report["stages"]]))
    if report["notes"]:
        B.append(("h", 2, "Notes"))
        B.append(("list", report["notes"]))
    return B


def _md_escape(text: Any) -> str:
    s = str(text)
    for ch in ("\\", "`", "*", "<", ">", "[", "]"):
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def _numeric_column(rows: list[list[Any]], i: int) -> bool:
    cells = [str(r[i]) for r in rows if i < len(r) and str(r[i]) not in ("", _NA)]
    return bool(cells) and all(c[0].isdigit() or (c[0] in "+-" and c[1:2].isdigit()) for c in cells)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown; figures are referenced as sibling PNG files (see :func:`write_report`)."""
    out = []
    for b in _blocks(report):
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + _md_escape(b[2]))
        elif kind == "p":
            out.append(_md_escape(b[1]))
        elif kind == "warn":
            out.append(f"> **WARNING:** {_md_escape(b[1])}")
        elif kind == "list":
            out.append("\n".join(f"- {_md_escape(i)}" for i in b[1]))
        elif kind == "table":
            header, rows = b[1], b[2]

            def cells(row):
                return "| " + " | ".join(_md_escape(c).replace("|", "\\|") for c in row) + " |"

            align = ["---:" if i and _numeric_column(rows, i) else "---" for i in range(len(header))]
            lines = [cells(header), "|" + "|".join(align) + "|"]
            lines += [cells(r) for r in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{_md_escape(b[2])}]({b[1]})")
    return "\n\n".join(out) + "\n"


def html(report: dict[str, Any], pngs: dict[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page, figures embedded as base64 PNGs (drawn unless given)."""
    pngs = figures(report) if pngs is None else pngs
    e = _html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(report['title'])}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}"
             "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             ".warn{background:#fff3cd;border-left:4px solid #d8a03b;padding:6px 10px;font-weight:600}"
             "li{color:#444;font-size:14px}img{max-width:100%}</style></head><body>"]
    for b in _blocks(report):
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "warn":
            parts.append(f"<p class='warn'>WARNING: {e(b[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b[1]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
            parts.append("</table>")
        elif kind == "img" and b[1] in pngs:
            parts.append(f"<figure><img alt='{e(b[2], quote=True)}' "
                         f"src='data:image/png;base64,{base64.b64encode(pngs[b[1]]).decode()}'>"
                         f"<figcaption>{e(b[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path, force: bool = False,
                 inputs: tuple = ()) -> list[Path]:
    """Write report.json, report.md, report.html and the PNGs into ``out_dir`` atomically; an existing file
    is replaced only with ``force`` (and never one of ``inputs``). Returns the written paths."""
    from toolchain.core.fsio import write_files

    pngs = figures(report)
    files: dict[str, bytes | str] = {
        "report.json": json.dumps(report, indent=2, allow_nan=False, default=str) + "\n",
        "report.md": markdown(report), "report.html": html(report, pngs), **pngs}
    return write_files(files, out_dir, force, inputs=inputs)
