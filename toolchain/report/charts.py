"""Charts of cost tables and comparisons: PNG (matplotlib, headless) and a self-contained HTML page with
the PNG embedded and the table beside it. Every energy axis says whether it is measured or estimated."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from toolchain.formats.costs import CostTable


def figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def layer_energy_png(table: CostTable, top: int = 20) -> bytes:
    """Horizontal bars: the ``top`` costliest layers' energy per inference (mJ), labelled with their share."""
    plt = pyplot()
    rows = table.rows[:top][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.6))
    values = [r.energy_j_mean * 1000 for r in rows]
    errors = [r.energy_j_std * 1000 for r in rows]
    ax.barh([short_label(r.label) for r in rows], values, xerr=errors, color="#3b7dd8", ecolor="#999")
    for y, (v, r) in enumerate(zip(values, rows, strict=True)):
        ax.text(v, y, f" {r.share:.1%}", va="center", fontsize=8)
    kind = table.energy_kind
    ax.set_xlabel(f"energy per inference, mJ ({kind}, {table.method}; meter {table.meter['name']})")
    ax.set_title(f"{table.model['name']} on {table.target['name']}: "
                 f"{table.joules_per_inference * 1000:.3g} mJ/inference ({kind})", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return figure_png(fig)


def short_label(label: str, width: int = 48) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1):]


def comparison_png(data: dict[str, Any]) -> bytes:
    """Side-by-side bars of latency and J/inference per (model, target) column, with 95% intervals."""
    plt = pyplot()
    cols = data["columns"]
    labels = [f"{c['model'].rsplit('/', 1)[-1]}\n@ {c['target']}" for c in cols]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(cols) * 2), 4))
    lat = [c["latency_ms"]["mean_ms"] for c in cols]
    a.bar(labels, lat, color="#888")
    a.set_ylabel("latency per inference, ms (mean)")
    j = [c["joules_per_inference"]["net"]["mean"] * 1000 for c in cols]
    err = [[max(0.0, c["joules_per_inference"]["net"]["mean"] - c["joules_per_inference"]["net"]["ci95"][0]) * 1000
            for c in cols],
           [max(0.0, c["joules_per_inference"]["net"]["ci95"][1] - c["joules_per_inference"]["net"]["mean"]) * 1000
            for c in cols]]
    b.bar(labels, j, yerr=err, color="#3b7dd8", ecolor="#444")
    kinds = sorted({c["meter"]["kind"] for c in cols})
    b.set_ylabel(f"net energy per inference, mJ ({'/'.join(kinds)})")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return figure_png(fig)


def html_page(title: str, png: bytes, sections: list[tuple[str, list[str], list[list[Any]]]], notes: list[str]) -> str:
    """A self-contained HTML page: the chart (embedded PNG), notes, then tables (heading, header, rows)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}.note{color:#555}</style>",
             f"</head><body><h1>{html.escape(title)}</h1>",
             f"<img alt='chart' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"]
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    for heading, header, rows in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def table_notes(table: CostTable) -> list[str]:
    """Where the figures came from, in words: meter, method, repeats, spread, coverage."""
    m = table.measurement
    j = m["joules_per_inference"]["net"]
    p = table.profile
    return [
        f"Energy: {table.energy_kind}, meter {table.meter['name']} ({table.meter['source']}); idle baseline "
        f"{table.meter['idle_watts']:.3g} W subtracted (net). {m['repeats']} windows, J/inference mean "
        f"{j['mean']:.4g} ± {j['std']:.2g} (sd), 95% CI {j['ci95'][0]:.4g}–{j['ci95'][1]:.4g}, CV {j['cv_pct']:.1f}%.",
        f"Per-layer energy: {table.method} (net energy x the layer's share of ORT-profiled kernel time, "
        f"{p['runs']} profiled runs). Per run the layers add up to {p['layers_sum_ms']:.3f} ms against "
        f"{p['end_to_end_ms']:.3f} ms end to end with the profiler off ({p['gap_pct']:+.1f}%, medians); unmapped "
        f"kernel time {p['unmapped_share']:.1%}.",
        f"Carbon: {m['gco2e_per_1000']['intensity_g_per_kwh']} gCO2e/kWh ({m['gco2e_per_1000']['intensity_source']}).",
        f"Model sha256 {table.model['sha256'][:16]}…, target {table.target['name']} "
        f"({', '.join(table.target['providers'])}); tool versions {table.versions}.",
    ]


def table_rows(table: CostTable, top: int | None = None, width: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the cost table for people; ``width`` shortens module paths from the left."""
    kind = table.energy_kind
    header = ["module", "type", "ops", "kernels", "latency ms", "± sd", "share", f"energy mJ ({kind})", "MMACs",
              "params", "MB moved"]
    rows = [[short_label(r.label, width) if width else r.label, r.module_type.rsplit(".", 1)[-1], " ".join(r.op_types),
             r.kernels, f"{r.latency_ms_mean:.4f}", f"{r.latency_ms_std:.4f}",
             f"{r.share:.2%}", f"{r.energy_j_mean * 1000:.4g}", f"{r.macs / 1e6:.2f}", r.params,
             f"{r.bytes_moved / 1e6:.2f}"] for r in table.rows[:top]]
    return header, rows
