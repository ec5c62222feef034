"""Charts of cost tables and comparisons: PNG (matplotlib, headless, imported only when drawing) and a
self-contained HTML page with the PNG embedded and the table beside it (:mod:`toolchain.report.render`).
Every energy axis says whether it is measured or estimated.

``figure_png``, ``pyplot`` and ``short_label`` are shared with the report's figures
(:mod:`toolchain.report.figures`).
"""

from __future__ import annotations

import io
from typing import Any

from toolchain.formats.costs import ONNX_NODE, CostTable, MeasurementRecord
from toolchain.report.render import CHART_CSS, esc, html_document, html_table, png_data_uri


def figure_png(fig) -> bytes:
    """``fig`` as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported here, not at module import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_label(label: str, width: int = 48) -> str:
    """``label`` shortened from the left to ``width`` characters (module paths end in what matters)."""
    return label if len(label) <= width else "…" + label[-(width - 1):]


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
    what = "ONNX node" if table.granularity == ONNX_NODE else "module"
    ax.set_xlabel(f"energy per inference (one sample), mJ ({kind}, {table.method} per {what}; "
                  f"meter {table.meter_info.name})")
    ax.set_title(f"{table.model['name']} on {table.target['name']}: "
                 f"{table.joules_per_inference * 1000:.3g} mJ/inference ({kind})", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return figure_png(fig)


def comparison_png(data: dict[str, Any]) -> bytes:
    """Side-by-side bars of latency and J/inference per (model, target) column, with 95% intervals.
    ``data`` is :meth:`toolchain.profile.run.Comparison.to_dict`; a column carries a measurement's keys."""
    plt = pyplot()
    cols = data["columns"]
    recs = [MeasurementRecord.from_dict(c) for c in cols]
    labels = [f"{c['model'].rsplit('/', 1)[-1]}\n@ {c['target']}" for c in cols]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(7, 2.2 * len(cols) * 2), 4))
    a.bar(labels, [r.latency_ms.mean_ms for r in recs], color="#888")
    a.set_ylabel("latency per call, ms (mean)")
    nets = [r.joules_per_inference.net for r in recs]
    err = [[max(0.0, j.mean - j.ci95[0]) * 1000 for j in nets], [max(0.0, j.ci95[1] - j.mean) * 1000 for j in nets]]
    b.bar(labels, [j.mean * 1000 for j in nets], yerr=err, color="#3b7dd8", ecolor="#444")
    kinds = sorted({r.meter.kind for r in recs})
    b.set_ylabel(f"net energy per inference (one sample), mJ ({'/'.join(kinds)})")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return figure_png(fig)


def html_page(title: str, png: bytes, sections: list[tuple[str, list[str], list[list[Any]]]], notes: list[str]) -> str:
    """A self-contained HTML page: the chart (embedded PNG), notes, then tables (heading, header, rows)."""
    body = [f"<h1>{esc(title)}</h1>", f"<img alt='chart' src='{png_data_uri(png)}'>"]
    body += [f"<p class='note'>{esc(n)}</p>" for n in notes]
    for heading, header, rows in sections:
        body.append(f"<h2>{esc(heading)}</h2>")
        body += html_table(header, rows)
    return html_document(title, CHART_CSS, body)


def granularity_note(table: CostTable) -> str:
    """What a row is, in words (per module, or per ONNX node for a model without the map)."""
    if table.granularity == ONNX_NODE:
        return ("Granularity: per ONNX node (onnx-node): the model carries no node-to-module map (it was not "
                "exported by `toolchain export`), so each row is one node of the ONNX file, named as in the file "
                "(unnamed nodes as <op>_<index>, as ORT names them); kernels ORT added or fused are charged to the "
                "node they came from.")
    return "Granularity: per PyTorch module (module), through the node-to-module map the export stored."


def fused_note(table: CostTable) -> str | None:
    """The share of kernel time that ran in subgraphs a provider compiled into one kernel, or None."""
    fused = [r for r in table.rows if r.fused_by]
    if not fused:
        return None
    by = sorted({r.fused_by for r in fused})
    return (f"Fused: {sum(r.share for r in fused):.1%} of the kernel time ran in {len(fused)} subgraph(s) "
            f"{' and '.join(by)} compiled into one kernel each; their time is one row each, not split per layer.")


def basis_note(m: MeasurementRecord) -> str:
    """What "per inference" and the latency are per, at the measured batch."""
    b = m.batch or 1
    if m.per_inference != "sample":
        return f"Batch {b}: energy per call (an older table)."
    return (f"Batch {b}: energy per inference is per sample (one call's joules / {b}); latency is per call "
            f"(one batch of {b}).")


def table_notes(table: CostTable) -> list[str]:
    """Where the figures came from, in words: granularity, meter, method, repeats, spread, coverage, fused
    kernels, batch, other load and the measurement's notes. Raises ValueError (or KeyError, TypeError)
    when the table lacks a figure the notes state."""
    m = table.measured
    j = m.joules_per_inference.net
    co2 = m.gco2e_per_1000
    meter = table.meter_info
    p = table.profile
    if None in (meter.name, meter.source, m.repeats, co2.intensity_g_per_kwh, co2.intensity_source):
        raise ValueError("the cost table lacks its meter, repeats or carbon intensity")
    load = m.cpu_load
    return [
        granularity_note(table),
        f"Energy: {table.energy_kind}, meter {meter.name} ({meter.source}); idle baseline "
        f"{meter.idle_watts:.3g} W subtracted (net). {m.repeats} windows, J/inference mean "
        f"{j.mean:.4g} ± {j.std:.2g} (sd), 95% CI {j.ci95[0]:.4g}–{j.ci95[1]:.4g}, CV {j.cv_pct:.1f}%.",
        basis_note(m),
        f"Per-layer energy: {table.method} (net energy x the row's share of ORT-profiled kernel time, "
        f"{p['runs']} profiled runs). Per run the rows add up to {p['layers_sum_ms']:.3f} ms against "
        f"{p['end_to_end_ms']:.3f} ms end to end with the profiler off ({p['gap_pct']:+.1f}%, medians); unmapped "
        f"kernel time {p['unmapped_share']:.1%}.",
        *([n] if (n := fused_note(table)) else []),
        ("Other load: " + (f"other processes used at most {load.max_other_share:.0%} of the {load.cpus} CPUs in a "
                           f"window ({load.source})" if load.checked else str(load.source))
         if load.checked is not None else "Other load: not recorded (an older table)."),
        *[f"Note: {n}" for n in m.notes],
        f"Carbon: {co2.intensity_g_per_kwh} gCO2e/kWh ({co2.intensity_source}).",
        f"Model sha256 {table.model['sha256'][:16]}…, target {table.target['name']} "
        f"({', '.join(table.target['providers'])}); tool versions {table.versions}.",
    ]


def table_rows(table: CostTable, top: int | None = None, width: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the cost table for people; ``width`` shortens module paths from the left. At
    ``onnx-node`` granularity the first column is the ONNX node and ``type`` its op type; a fused row's
    ``ops`` are the op types it covers (or "not known")."""
    kind = table.energy_kind
    header = ["ONNX node" if table.granularity == ONNX_NODE else "module", "type", "ops", "kernels",
              "latency ms", "± sd", "share", f"energy mJ ({kind})", "MMACs", "params", "MB moved"]
    rows = [[short_label(r.label, width) if width else r.label, r.module_type.rsplit(".", 1)[-1],
             " ".join(r.op_types) if not r.fused_by or r.onnx_nodes else "not known",
             r.kernels, f"{r.latency_ms_mean:.4f}", f"{r.latency_ms_std:.4f}",
             f"{r.share:.2%}", f"{r.energy_j_mean * 1000:.4g}", f"{r.macs / 1e6:.2f}", r.params,
             f"{r.bytes_moved / 1e6:.2f}"] for r in table.rows[:top]]
    return header, rows
