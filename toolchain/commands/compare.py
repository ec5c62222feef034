"""toolchain compare"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, is_quiet, json_option, json_safe_stdout, status
from toolchain.commands.profile import measure_options, profile_options


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--targets", "target_specs", metavar="T1,T2,...",
              help="Comma-separated built-in targets or TOML files (default: this machine's CPU). A target that is "
                   "not usable here is skipped with its reason.")
@measure_options
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Also write comparison.json, comparison.png and comparison.html, and each column's cost table, here.")
@click.option("--top", type=click.IntRange(1), default=12, show_default=True, help="Layers shown in the per-layer deltas.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@json_option
@click.pass_context
def compare(ctx, models, target_specs, meter, watts, watts_per_core, data, batch, seq_len, repeats, window_s, idle_s,
            warmup, profile_runs, threads, output, top, force, as_json) -> None:
    """Compare one or more models across targets, side by side.

    \b
    Every (model, target) column gets latency, joules per inference, watts and gCO2e per
    1,000 inferences, with ratios against the first column; on each target the models'
    measuring windows are interleaved so drift hits them alike. Per-layer deltas against
    the first column follow (INT8 models keep their FP32 export's node-to-module map, so
    the layers line up).

    \b
    Examples:
      toolchain compare resnet50.onnx resnet50.int8.onnx --targets x86-cpu --meter estimate
      toolchain compare model.onnx --targets x86-cpu,cuda,tensorrt -o cmp/
    """
    from pathlib import Path

    from toolchain.profile.run import compare_models
    from toolchain.targets.host import default_target_name
    from toolchain.targets.target import load_target

    quiet = is_quiet(ctx, as_json)
    if len(models) > 8:
        raise click.UsageError("compare takes at most 8 models")
    for m in models:
        if not Path(m).is_file():
            raise click.BadParameter(f"{m}: no such file", param_hint="MODELS")
    options = profile_options(meter, watts, watts_per_core, data, batch, seq_len, repeats, window_s, idle_s, warmup,
                              profile_runs, threads)
    specs = [s.strip() for s in (target_specs or default_target_name()).split(",") if s.strip()]
    if not specs:
        raise click.BadParameter("no target given", param_hint="--targets")
    targets = [load_target(s) for s in specs]
    with json_safe_stdout(as_json), status(f"comparing {len(models)} model(s) on {len(targets)} target(s)",
                                           quiet=quiet) as progress:
        result = compare_models(list(models), targets, options, progress=progress)
        data_out = result.to_dict()
        if output:
            data_out["files"] = [str(p) for p in _write(result, data_out, output, force, models, top)]
    emit(data_out, as_json, lambda console: _render(console, data_out, top))


def _write(result, data_out, output, force, models, top):
    import json
    from pathlib import Path

    from toolchain.report.charts import comparison_png, html_page

    png = comparison_png(data_out)
    header, rows = _summary_rows(data_out)
    dheader, drows = _delta_rows(data_out, top=None)
    page = html_page("comparison", png, [("Models x targets", header, rows), ("Per-layer deltas", dheader, drows)],
                     [_provenance(data_out)] + [f"skipped {s['target']}: {s['reason']}" for s in data_out["skipped"]])
    files = {"comparison.json": json.dumps(data_out, indent=2), "comparison.png": png, "comparison.html": page}
    for i, ((model, target), table) in enumerate(result.tables.items(), 1):
        files[f"costs-{i}-{Path(model).stem}-{target}.json"] = table.to_json()
        files[f"costs-{i}-{Path(model).stem}-{target}.csv"] = table.to_csv()
    from toolchain.core.fsio import write_files

    return write_files(files, output, force, inputs=tuple(models))


def _measured(column):
    """A comparison column's measurement figures, typed (a column carries a measurement's keys)."""
    from toolchain.formats.costs import MeasurementRecord

    return MeasurementRecord.from_dict(column)


def _provenance(data_out) -> str:
    parts = []
    for c in data_out["columns"]:
        m = _measured(c)
        parts.append(f"{_basename(c['model'])} @ {c['target']}: meter {m.meter.name} ({m.meter.kind}), "
                     f"{m.repeats} windows, J/inference CV {m.joules_per_inference.net.cv_pct:.1f}%")
    return "; ".join(parts)


def _basename(p: str) -> str:
    return p.replace("\\", "/").rsplit("/", 1)[-1]


def _summary_rows(data_out):
    header = ["model", "target", "precision", "latency ms", "x first", "mJ/inference", "95% CI", "x first", "W",
              "gCO2e/1k", "energy"]
    rows = []
    for c in data_out["columns"]:
        m = _measured(c)
        j = m.joules_per_inference.net
        rows.append([_basename(c["model"]), c["target"], c["precision"], f"{m.latency_ms.mean_ms:.3f}",
                     f"{c['latency_ratio']:.2f}", f"{j.mean * 1000:.4g}",
                     f"{j.ci95[0] * 1000:.4g}-{j.ci95[1] * 1000:.4g}",
                     f"{c['energy_ratio']:.2f}" if c["energy_ratio"] is not None else "-",
                     f"{m.watts.gross.mean:.3g}", f"{m.gco2e_per_1000.mean:.4g}", m.meter.kind])
    return header, rows


def _delta_rows(data_out, top):
    deltas = data_out["layer_deltas"]
    if not deltas:
        return [], []
    names = list(deltas[0]["columns"])
    header = ["module (first column's costliest first)", "ms", "mJ"] + [h for n in names for h in (f"Δms {n}", f"ΔmJ {n}")]
    rows = []
    for d in deltas[:top]:
        row = [d["module"], f"{d['base_ms']:.4f}", f"{d['base_j'] * 1000:.4g}"]
        for n in names:
            c = d["columns"][n]
            row += ["-", "-"] if c is None else [f"{c['delta_ms']:+.4f}", f"{c['delta_j'] * 1000:+.4g}"]
        rows.append(row)
    return header, rows


def _render(console, data_out, top) -> None:
    from rich.table import Table

    header, rows = _summary_rows(data_out)
    t = Table(title="models x targets (ratios against the first column; energy net of idle)")
    for h in header:
        t.add_column(h, justify="left" if h in ("model", "target", "precision", "energy") else "right")
    for row, c in zip(rows, data_out["columns"], strict=True):
        if _measured(c).meter.kind == "estimated":
            row[-1] = "[bold yellow]ESTIMATED[/]"
        t.add_row(*[str(x) for x in row])
    console.print(t)
    for c in data_out["columns"]:
        m = _measured(c)
        console.print(f"  {_basename(c['model'])} @ {c['target']}: energy {m.meter.kind} by {m.meter.name} "
                      f"({m.meter.source}), {m.repeats} windows")
    for s in data_out["skipped"]:
        console.print(f"  [yellow]skipped[/] {s['target']}: {s['reason']}")
    dheader, drows = _delta_rows(data_out, top)
    if drows:
        d = Table(title=f"per-layer deltas against the first column (top {len(drows)})")
        for h in dheader:
            d.add_column(h, justify="left" if h.startswith("module") else "right", overflow="fold")
        for row in drows:
            d.add_row(*[str(x) for x in row])
        console.print(d)
    for f in data_out.get("files", []):
        console.print(f"  wrote {f}")
