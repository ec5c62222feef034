"""The sustainability report of a `toolchain pipeline` run, as data: the variants side by side (baseline,
each single technique, the full pipeline) as a SuComp-style comparison table, the energy-aware pruning
paper's metrics, the Green Score (:mod:`toolchain.report.metrics` defines them), the per-layer cost before
and after (:mod:`toolchain.report.layers`), the Pareto front of the search, a headline, and where every
figure came from.

:func:`build_report` is pure: it turns the pipeline's ``run`` dict (:mod:`toolchain.report.inputs`) into a
JSON-able report; :mod:`toolchain.report.documents` renders and writes it.

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

from typing import Any

from toolchain.formats.costs import MeasurementRecord, grams_co2e_per_1000
from toolchain.report.inputs import RunInput, VariantInput
from toolchain.report.layers import TOP_LAYERS, layers
from toolchain.report.metrics import (
    DEFINITIONS,
    GREEN_SCORE_UNIT,
    Figures,
    compression,
    green_score,
    metric_delta,
    mj,
    num,
    paper_metrics,
    pareto_front,
    ratio,
    reductions,
)
from toolchain.report.render import fmt, kind_label

SCHEMA = "toolchain.report"
SCHEMA_VERSION = 1


def _interval(x: tuple | None) -> list | None:
    return None if x is None else list(x)


def _measured(m: MeasurementRecord | None, target: dict[str, Any]) -> dict[str, Any]:
    """The figures of one variant's measurement (None where it is missing)."""
    out: dict[str, Any] = {"joules_per_inference": None, "latency_ms": None, "gco2e_per_1000": None,
                           "provenance": None, "kind": None}
    if m is None:
        return out
    net, lat, co2 = m.joules_per_inference.net, m.latency_ms, m.gco2e_per_1000
    if num(net.mean) is not None:
        out["joules_per_inference"] = {"mean": num(net.mean), "std": num(net.std), "ci95": _interval(net.ci95),
                                       "n": net.n, "cv_pct": num(net.cv_pct)}
    median = num(lat.median_ms)
    if median is None:
        median = num(lat.mean_ms)
    if median is not None:
        out["latency_ms"] = {"median": median, "mean": num(lat.mean_ms), "std": num(lat.std_ms),
                             "p10": num(lat.p10_ms), "p90": num(lat.p90_ms), "ci95": _interval(lat.ci95_ms),
                             "runs": lat.runs}
    if num(co2.mean) is not None:
        out["gco2e_per_1000"] = {"mean": num(co2.mean), "ci95": _interval(co2.ci95),
                                 "intensity_g_per_kwh": co2.intensity_g_per_kwh,
                                 "intensity_source": co2.intensity_source, "computed": False}
    elif out["joules_per_inference"] and num(target.get("carbon_g_per_kwh")) is not None:
        j = out["joules_per_inference"]
        g = target["carbon_g_per_kwh"]
        ci = j["ci95"]
        out["gco2e_per_1000"] = {
            "mean": grams_co2e_per_1000(j["mean"], g),
            "ci95": [grams_co2e_per_1000(x, g) for x in ci] if isinstance(ci, list | tuple) else None,
            "intensity_g_per_kwh": g, "intensity_source": target.get("carbon_source"), "computed": True}
    out["kind"] = m.kind
    co2d = out["gco2e_per_1000"] or {}
    out["provenance"] = {
        "meter": m.meter.name, "meter_kind": m.kind, "meter_source": m.meter.source, "repeats": m.repeats,
        "idle_watts": num(m.idle_baseline.watts), "idle_seconds": num(m.idle_baseline.seconds),
        "j_cv_pct": num(net.cv_pct), "j_ci95": _interval(net.ci95), "latency_runs": lat.runs,
        "intensity_g_per_kwh": co2d.get("intensity_g_per_kwh"), "intensity_source": co2d.get("intensity_source"),
        "target": target.get("name")}
    return out


def _variant(v: VariantInput, base: tuple[dict[str, Any], Figures] | None,
             target: dict[str, Any]) -> tuple[dict[str, Any], Figures]:
    """One variant's entry of ``variants`` and its figures; ``base`` is None for the baseline itself."""
    f = _measured(v.measurement, target)
    fig = Figures(metric=num(v.metric), joules=(f["joules_per_inference"] or {}).get("mean"),
                  latency_ms=(f["latency_ms"] or {}).get("median"), co2=(f["gco2e_per_1000"] or {}).get("mean"),
                  params=v.params, size=v.size_bytes)
    ref = fig if base is None else base[1]  # the baseline is compared with itself
    green = green_score(fig)
    measured = f["joules_per_inference"] is not None
    if base is not None:
        green_x = ratio(green, base[0]["green_score"])
    else:
        green_x = None if green is None else 1.0
    out = {
        "name": v.name, "onnx": v.onnx, "measured": measured,
        "status": "measured" if measured else (v.status or "not measured"),
        "metric": fig.metric, "metric_delta_points": metric_delta(fig, ref),
        "params": v.params, "size_bytes": v.size_bytes, "compression": compression(fig, ref),
        "joules_per_inference": f["joules_per_inference"], "latency_ms": f["latency_ms"],
        "gco2e_per_1000": f["gco2e_per_1000"], "reduction_pct": reductions(fig, ref),
        "paper_metrics": None if base is None else paper_metrics(fig, ref),
        "green_score": green, "green_score_x": green_x, "provenance": f["provenance"],
    }
    return out, fig


def _pareto(pareto: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    if not pareto:
        return None
    pts = [{"label": str(p.get("label", "")), "metric": num(p.get("metric")), "joules": num(p.get("joules")),
            "latency_ms": num(p.get("latency_ms")), "config": p.get("config") or {}} for p in pareto]
    fe, fl = pareto_front(pts, "joules"), pareto_front(pts, "latency_ms")
    for i, p in enumerate(pts):
        p["front_energy"], p["front_latency"] = i in fe, i in fl
    return {"energy_kind": kind, "points": pts}


def _signed_reduction(pct: float | None) -> str:
    if pct is None:
        return "change n/a"
    return f"-{pct:.1f}%" if pct >= 0 else f"+{-pct:.1f}% (an increase)"


def _overlaps(a: Any, b: Any) -> bool:
    """Whether two 95% intervals overlap."""
    return (isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b) == 2
            and a[0] <= b[1] and b[0] <= a[1])


def _headline(variants: list[dict[str, Any]], figs: list[Figures], metric_name: str) -> tuple[str, dict[str, Any]]:
    """The last variant against the baseline and against every single technique between them."""
    if len(variants) < 2:
        return ("No variants in this run." if not variants else
                f"Only one variant ({variants[0]['name']}); there is nothing to compare it with."), {}
    base, last = variants[0], variants[-1]
    bv, lv = figs[0], figs[-1]
    lj = lv.joules
    beaten, not_beaten, not_compared, overlap = [], [], [], []
    lci = (last["joules_per_inference"] or {}).get("ci95")
    for v, fv in zip(variants[1:-1], figs[1:-1], strict=True):
        if lj is None or fv.joules is None:
            not_compared.append(v["name"])
            continue
        (beaten if lj < fv.joules else not_beaten).append(v["name"])
        if _overlaps((v["joules_per_inference"] or {}).get("ci95"), lci):
            overlap.append(v["name"])
    singles = len(variants) > 2
    beats = None if lj is None or not singles or not_compared else not not_beaten
    facts = {"energy_reduction_pct": last["reduction_pct"]["energy"],
             "latency_reduction_pct": last["reduction_pct"]["latency"],
             "metric_delta_points": last["metric_delta_points"],
             "beats_every_single_technique": beats, "beaten": beaten, "not_beaten": not_beaten,
             "not_compared": not_compared, "ci_overlap": overlap}
    kind = (last["provenance"] or {}).get("meter_kind")
    kind_txt = "ESTIMATED" if kind == "estimated" else (kind or "not measured")
    s = (f"{last['name']} vs {base['name']}: net energy per inference {_signed_reduction(facts['energy_reduction_pct'])} "
         f"({fmt(mj(bv.joules))} → {fmt(mj(lv.joules))} mJ, {kind_txt}), median latency "
         f"{_signed_reduction(facts['latency_reduction_pct'])} ({fmt(bv.latency_ms)} → {fmt(lv.latency_ms)} ms), "
         f"{metric_name} {fmt(facts['metric_delta_points'], '+.2f')} points "
         f"({fmt(bv.metric, '.2f')} → {fmt(lv.metric, '.2f')}).")
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


def _warnings(variants: list[dict[str, Any]], kinds: list[str | None], target: dict[str, Any]) -> list[str]:
    """Estimated energy, mixed meter kinds or meters, missing measurements, a carbon intensity off the target's."""
    warnings = []
    estimated = [v["name"] for v in variants if (v["provenance"] or {}).get("meter_kind") == "estimated"]
    if estimated:
        src = {(v["provenance"] or {}).get("meter_source") for v in variants if v["name"] in estimated}
        warnings.append(f"ENERGY IS ESTIMATED, NOT MEASURED for {', '.join(estimated)} (source: "
                        f"{'; '.join(sorted(str(s) for s in src))}): every energy, carbon and Green Score figure "
                        "derived from it is an estimate.")
    if len(set(kinds)) > 1:
        warnings.append("Variants were measured with different meter kinds (" + kind_label(kinds) + "); their "
                        "energy figures are not comparable.")
    meters = {(v["provenance"] or {}).get("meter") for v in variants if v["measured"]}
    if len(meters) > 1:
        warnings.append(f"Variants were measured with different meters ({', '.join(sorted(map(str, meters)))}).")
    for v in variants:
        if not v["measured"]:
            warnings.append(f"{v['name']}: no energy measurement ({v['status']}); its figures are n/a.")
        g = (v["gco2e_per_1000"] or {}).get("intensity_g_per_kwh")
        if g is not None and num(target.get("carbon_g_per_kwh")) is not None and num(g) != num(
                target["carbon_g_per_kwh"]):
            warnings.append(f"{v['name']}: carbon computed at {g} gCO2e/kWh, the target says "
                            f"{target['carbon_g_per_kwh']}.")
    return warnings


def build_report(run: dict[str, Any], top: int = TOP_LAYERS) -> dict[str, Any]:
    """The report of a pipeline ``run`` (see the module docstring for both shapes); pure, JSON-able."""
    r = RunInput.of(run)
    target = r.target
    variants: list[dict[str, Any]] = []
    figs: list[Figures] = []
    for v in r.variants:
        out, fig = _variant(v, (variants[0], figs[0]) if variants else None, target)
        variants.append(out)
        figs.append(fig)
    kinds = [(v["provenance"] or {}).get("meter_kind") for v in variants if v["measured"]]
    warnings = _warnings(variants, kinds, target)
    headline, facts = _headline(variants, figs, r.metric_name)
    layer_section = layers(r.variants, warnings, top)
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "title": r.title, "model": r.model, "target": target,
        "metric": {"name": r.metric_name, "unit": "points", "higher_is_better": True},
        "baseline": variants[0]["name"] if variants else None, "final": variants[-1]["name"] if variants else None,
        "energy_kinds": sorted({k for k in kinds if k}),
        "estimated": any((v["provenance"] or {}).get("meter_kind") == "estimated" for v in variants),
        "variants": variants,
        "green_score": {"unit": GREEN_SCORE_UNIT, "definition": DEFINITIONS["Green Score"]},
        "definitions": dict(DEFINITIONS),
        "headline": headline, "headline_facts": facts,
        "layers": layer_section,
        "pareto": _pareto(r.pareto, kind_label(kinds)),
        "stages": r.stages, "notes": r.notes,
        "warnings": warnings,
    }
