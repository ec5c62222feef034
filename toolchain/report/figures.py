"""The report's figures, drawn from the report dict (:func:`toolchain.report.build.build_report`):
variants.png (energy, latency and quality per variant), pareto.png (the search's Pareto fronts) and
layers.png (where the energy went, per module). matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toolchain.report.charts import figure_png, pyplot, short_label
from toolchain.report.layers import shown_moves
from toolchain.report.metrics import mj
from toolchain.report.render import NA, kind_label


def energy_axis(kinds) -> str:
    return f"net energy per inference, mJ ({kind_label(kinds)})"


def variants_png(report: dict[str, Any]) -> bytes:
    """Three panels per variant: net mJ/inference (95% CI; hatched when estimated), median latency, metric."""
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
            ax.text(i, top, NA if v is None else f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)

    j = [mj((v["joules_per_inference"] or {}).get("mean")) for v in vs]
    jerr = [[0.0] * len(vs), [0.0] * len(vs)]
    for i, v in enumerate(vs):
        ci = (v["joules_per_inference"] or {}).get("ci95")
        if j[i] is not None and isinstance(ci, list | tuple) and len(ci) == 2:
            jerr[0][i] = max(0.0, j[i] - ci[0] * 1000)
            jerr[1][i] = max(0.0, ci[1] * 1000 - j[i])
    hatches = ["//" if (v["provenance"] or {}).get("meter_kind") == "estimated" else "" for v in vs]
    bars(axes[0], j, jerr, energy_axis(kinds), "#3b7dd8", hatches)
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


def pareto_png(report: dict[str, Any]) -> bytes:
    """The search's points, metric against energy and against latency, fronts stepped, the variants starred."""
    plt = pyplot()
    pts = report["pareto"]["points"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = [(axes[0], "joules", "front_energy", 1000.0, energy_axis([report["pareto"]["energy_kind"]]),
               lambda v: mj((v["joules_per_inference"] or {}).get("mean"))),
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


def layers_png(report: dict[str, Any]) -> bytes:
    """Before and after bars per module, the costliest before first; removed or fused modules marked."""
    plt = pyplot()
    layers = report["layers"]
    rows = shown_moves(layers["where_energy_went"])[::-1]
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
    ax.set_xlabel(f"energy per inference, mJ (before {kind_label([b['energy_kind']])}, after "
                  f"{kind_label([a['energy_kind']])}; {b['method']} attribution)")
    ax.set_title("where the energy went: per module, before and after", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return figure_png(fig)


def planned(report: dict[str, Any]) -> list[tuple[str, str, Callable[[dict[str, Any]], bytes]]]:
    """(file name, caption, drawer) of each figure the report has, in the documents' order."""
    plan = []
    if report["variants"]:
        plan.append(("variants.png", "Energy, latency and quality per variant", variants_png))
    if report["pareto"]:
        plan.append(("pareto.png", "Pareto front of the sweep: metric vs energy and vs latency", pareto_png))
    layers = report["layers"]
    if layers and layers["before"] and layers["after"]:
        plan.append(("layers.png", "Where the energy went, per module, before and after", layers_png))
    return plan


def figures(report: dict[str, Any]) -> dict[str, bytes]:
    """The report's PNGs by file name (matplotlib, headless)."""
    return {name: draw(report) for name, _caption, draw in planned(report)}
