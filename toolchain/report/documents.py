"""The report as documents: :func:`markdown` and :func:`html` (self-contained, PNGs embedded) render one
list of blocks (:func:`blocks`) through :mod:`toolchain.report.render`; :func:`write_report` writes
``report.json``, ``report.md``, ``report.html`` and the PNGs (:mod:`toolchain.report.figures`) atomically.

A block is ("h", level, text), ("p", text), ("warn", text), ("list", items), ("table", header, rows) or
("img", file name, caption).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolchain.report.figures import figures, planned
from toolchain.report.layers import shown_moves
from toolchain.report.metrics import DEFINITIONS, GREEN_SCORE_UNIT, mj
from toolchain.report.render import (
    NA,
    REPORT_CSS,
    esc,
    fmt,
    fmt_big,
    html_document,
    html_table,
    kind_label,
    md_escape,
    md_table,
    png_data_uri,
)

Block = tuple


def _comparison(report: dict[str, Any], metric: str) -> list[Block]:
    header = ["variant", metric, "Δ points", "params x", "bytes x", "net mJ/inference", "CV %", "n",
              "latency ms (median)", "gCO2e/1k inferences", "energy red. %", "latency red. %", "carbon red. %",
              "energy"]
    rows = []
    for v in report["variants"]:
        j, lat, co2, red = v["joules_per_inference"] or {}, v["latency_ms"] or {}, v["gco2e_per_1000"] or {}, \
            v["reduction_pct"]
        kind = (v["provenance"] or {}).get("meter_kind")
        rows.append([v["name"], fmt(v["metric"], ".2f"), fmt(v["metric_delta_points"], "+.2f"),
                     fmt(v["compression"]["params_x"], ".2f"), fmt(v["compression"]["bytes_x"], ".2f"),
                     fmt(mj(j.get("mean"))), fmt(j.get("cv_pct"), ".1f"), str(j.get("n", NA)) if j else NA,
                     fmt(lat.get("median")), fmt(co2.get("mean")), fmt(red["energy"], ".1f"),
                     fmt(red["latency"], ".1f"), fmt(red["carbon"], ".1f"),
                     "ESTIMATED" if kind == "estimated" else (kind or NA)])
    return [("h", 2, "Comparison (SuComp Table 2 style)"), ("table", header, rows),
            ("p", f"Reductions: {DEFINITIONS['reduction_pct']}. Compression: params x = "
                  f"{DEFINITIONS['compression params_x']}; bytes x = {DEFINITIONS['compression bytes_x']}.")]


def _paper_and_green(report: dict[str, Any], metric: str) -> list[Block]:
    vs = report["variants"]
    header = ["variant", "ARP %", "EPR % (energy/inference)", "LSI x", "MSE (storage) %", "CFA %"]
    rows = [[v["name"], fmt(p["arp_pct"], ".2f"), fmt(p["epr_pct"], ".1f"), fmt(p["lsi_x"], ".2f"),
             fmt(p["mse_storage_pct"], ".1f"), fmt(p["cfa_pct"], ".1f")]
            for v in vs[1:] if (p := v["paper_metrics"])]
    return [("h", 2, "Energy-aware pruning paper metrics (Eqs. 4-8)"), ("table", header, rows),
            ("list", [f"{k}: {DEFINITIONS[k]}" for k in ("ARP", "EPR", "LSI", "MSE (storage)", "CFA")]),
            ("h", 2, "Green Score"),
            ("table", ["variant", metric, "gCO2e/1k inferences", f"Green Score ({GREEN_SCORE_UNIT})", "x baseline"],
             [[v["name"], fmt(v["metric"], ".2f"), fmt((v["gco2e_per_1000"] or {}).get("mean")),
               fmt_big(v["green_score"]), fmt(v["green_score_x"], ".2f")] for v in vs]),
            ("p", DEFINITIONS["Green Score"] + ".")]


def _pareto(report: dict[str, Any], metric: str) -> list[Block]:
    pareto = report["pareto"]
    return [("h", 2, "Pareto front"),
            ("table", ["point", metric, f"mJ/inference ({pareto['energy_kind']})", "latency ms", "front (energy)",
                       "front (latency)", "config"],
             [[p["label"], fmt(p["metric"], ".2f"), fmt(mj(p["joules"])), fmt(p["latency_ms"]),
               "yes" if p["front_energy"] else "", "yes" if p["front_latency"] else "",
               json.dumps(p["config"], sort_keys=True)] for p in pareto["points"]]),
            ("p", "A point is on the front when no other point has at least its metric and at most its "
                  "energy (or latency), and is better in one of the two.")]


def _layers(layers: dict[str, Any]) -> list[Block]:
    B: list[Block] = [("h", 2, "Per-layer cost: before and after")]
    for side in ("before", "after"):
        t = layers[side]
        if not t:
            continue
        kind = kind_label([t["energy_kind"]])
        B.append(("h", 3, f"{side.capitalize()}: {t['variant']} ({fmt(mj(t['joules_per_inference']))} "
                          f"mJ/inference, {kind}, {t['modules']} modules)"))
        B.append(("table", ["module", "type", "latency ms", f"energy mJ ({kind})", "share"],
                  [[r["module"], r["module_type"].rsplit(".", 1)[-1], fmt(r["latency_ms"]),
                    fmt(r["energy_mj"]), fmt(r["share"] * 100, ".1f", "%")] for r in t["top"]]))
        B.append(("list", t["notes"]))
    moves = layers["where_energy_went"]
    if moves:
        B.append(("h", 3, "Where the energy went"))
        shown = shown_moves(moves)
        shown += [r for r in moves if r["after_mj"] is None and r not in shown]
        tot = layers["totals"]
        rows = [[r["module"], r["status"], fmt(r["before_mj"]), fmt(r["after_mj"]), fmt(r["delta_mj"], "+.4g"),
                 fmt(r["before_ms"]), fmt(r["after_ms"])] for r in shown]
        rows.append(["all modules", "total", fmt(tot["before_mj"]), fmt(tot["after_mj"]),
                     fmt(tot["delta_mj"], "+.4g"), "", ""])
        B.append(("table", ["module", "status", "before mJ", "after mJ", "Δ mJ", "before ms", "after ms"], rows))
        if len(shown) < len(moves):
            B.append(("p", f"{len(moves) - len(shown)} more modules in report.json (layers.where_energy_went)."))
    B.append(("list", layers["notes"]))
    return B


def _provenance(v: dict[str, Any]) -> str:
    p = v["provenance"]
    if not p:
        return f"{v['name']}: no measurement ({v['status']}); every figure derived from it is n/a."
    kind = "ESTIMATED (not measured)" if p["meter_kind"] == "estimated" else (p["meter_kind"] or NA)
    ci = p["j_ci95"]
    ci_txt = f"{fmt(mj(ci[0]))}-{fmt(mj(ci[1]))} mJ" if isinstance(ci, list | tuple) and len(ci) == 2 else NA
    lat = v["latency_ms"] or {}
    co2 = v["gco2e_per_1000"] or {}
    return (
        f"{v['name']}: energy {kind} by meter {p['meter'] or NA} ({p['meter_source'] or NA}); "
        f"{p['repeats'] if p['repeats'] is not None else NA} windows, J/inference CV {fmt(p['j_cv_pct'], '.1f')}%, "
        f"95% CI {ci_txt}; idle baseline {fmt(p['idle_watts'], '.3g')} W over {fmt(p['idle_seconds'], '.3g')} s "
        f"subtracted; latency median of {lat.get('runs', NA)} runs (p10-p90 {fmt(lat.get('p10'))}-"
        f"{fmt(lat.get('p90'))} ms); carbon at {p['intensity_g_per_kwh'] if p['intensity_g_per_kwh'] is not None else NA} "
        f"gCO2e/kWh ({p['intensity_source'] or NA}{', computed here from J x intensity' if co2.get('computed') else ''}); "
        f"target {p['target'] or NA}; model {v['onnx'] or NA}.")


def blocks(report: dict[str, Any]) -> list[Block]:
    """The document as blocks, in reading order."""
    metric = report["metric"]["name"]
    model, target = report["model"], report["target"]
    captions = {name: caption for name, caption, _ in planned(report)}

    def img(name: str) -> list[Block]:
        return [("img", name, captions[name])] if name in captions else []

    B: list[Block] = [("h", 1, report["title"]), ("p", report["headline"])]
    B += [("warn", w) for w in report["warnings"]]
    B.append(("p", f"Model {model.get('source', NA)} (task {model.get('task', NA)}, sha256 "
                   f"{str(model.get('sha256') or NA)[:16]}); target {target.get('name', NA)}, carbon intensity "
                   f"{target.get('carbon_g_per_kwh', NA)} gCO2e/kWh ({target.get('carbon_source', NA)}). "
                   f"Energy: {kind_label(report['energy_kinds'])}, net of the idle baseline."))
    B += _comparison(report, metric) + img("variants.png")
    B += _paper_and_green(report, metric)
    if report["pareto"]:
        B += _pareto(report, metric) + img("pareto.png")
    if report["layers"]:
        B += _layers(report["layers"]) + img("layers.png")
    B += [("h", 2, "Provenance"), ("list", [_provenance(v) for v in report["variants"]])]
    if report["stages"]:
        B.append(("h", 2, "Pipeline stages"))
        B.append(("table", ["stage", "status", "seconds"],
                  [[str(s.get("name", "")), str(s.get("status", "")), fmt(s.get("seconds"), ".1f")]
                   for s in report["stages"]]))
    if report["notes"]:
        B += [("h", 2, "Notes"), ("list", report["notes"])]
    return B


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown; figures are referenced as sibling PNG files (see :func:`write_report`)."""
    out = []
    for b in blocks(report):
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + md_escape(b[2]))
        elif kind == "p":
            out.append(md_escape(b[1]))
        elif kind == "warn":
            out.append(f"> **WARNING:** {md_escape(b[1])}")
        elif kind == "list":
            out.append("\n".join(f"- {md_escape(i)}" for i in b[1]))
        elif kind == "table":
            out.append(md_table(b[1], b[2]))
        elif kind == "img":
            out.append(f"![{md_escape(b[2])}]({b[1]})")
    return "\n\n".join(out) + "\n"


def html(report: dict[str, Any], pngs: dict[str, bytes] | None = None) -> str:
    """The report as one self-contained HTML page, figures embedded as base64 PNGs (drawn unless given)."""
    pngs = figures(report) if pngs is None else pngs
    body = []
    for b in blocks(report):
        kind = b[0]
        if kind == "h":
            body.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
        elif kind == "p":
            body.append(f"<p>{esc(b[1])}</p>")
        elif kind == "warn":
            body.append(f"<p class='warn'>WARNING: {esc(b[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            body += html_table(b[1], b[2])
        elif kind == "img" and b[1] in pngs:
            body.append(f"<figure><img alt='{esc(b[2])}' src='{png_data_uri(pngs[b[1]])}'>"
                        f"<figcaption>{esc(b[2])}</figcaption></figure>")
    return html_document(report["title"], REPORT_CSS, body)


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
