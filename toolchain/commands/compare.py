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
@click.option("--cluster", metavar="HOST:PORT",
              help="Run each target's job on a node of this Ray cluster that offers the target (`toolchain worker`); "
                   "the files ship through Ray's object store and the cost tables come back here. Needs --targets.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Also write comparison.json, comparison.png and comparison.html, and each column's cost table, here.")
@click.option("--top", type=click.IntRange(1), default=12, show_default=True, help="Layers shown in the per-layer deltas.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@json_option
@click.pass_context
def compare(ctx, models, target_specs, meter, watts, watts_per_core, data, batch, seq_len, repeats, window_s, idle_s,
            warmup, profile_runs, threads, cluster, output, top, force, as_json) -> None:
    """Compare one or more models across targets, side by side.

    \b
    Every (model, target) column gets latency, joules per inference, watts and gCO2e per
    1,000 inferences, with ratios against the first column; the measuring windows of all
    models on all targets that share a meter are interleaved so drift hits them alike.
    Per-layer deltas against the first column follow (INT8 models keep their FP32 export's
    node-to-module map, so the layers line up; a model without a map lines up by ONNX
    node name). With --batch N, energy is per sample, latency per call.

    \b
    With --cluster, each target's job runs on a node of a Ray cluster that offers it
    (`toolchain worker --target T --address HEAD`), with that node's onnxruntime build and
    meter; jobs on nodes of one host are interleaved window by window across the nodes,
    jobs on different hosts run at once.
    Each column names its node (host, CPU or GPU, onnxruntime build). A target no node
    offers is an error naming what the cluster has; a job whose node is lost is retried
    once on another node with the target, else the target is reported lost and the other
    results are kept.

    \b
    Examples:
      toolchain compare resnet50.onnx resnet50.int8.onnx --targets x86-cpu --meter estimate
      toolchain compare model.onnx --targets x86-cpu,cuda,tensorrt -o cmp/
      toolchain compare m.onnx m.int8.onnx --targets x86-cpu,openvino-cpu --cluster 10.0.0.5:6379
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
    if cluster and not target_specs:
        raise click.UsageError("with --cluster, name the targets to run on (--targets T1,T2)")
    specs = [s.strip() for s in (target_specs or default_target_name()).split(",") if s.strip()]
    if not specs:
        raise click.BadParameter("no target given", param_hint="--targets")
    targets = [load_target(s) for s in specs]
    with json_safe_stdout(as_json), status(f"comparing {len(models)} model(s) on {len(targets)} target(s)",
                                           quiet=quiet) as progress:
        if cluster:
            from toolchain.fleet.dispatch import run_on_cluster
            from toolchain.fleet.results import annotate, comparison_of

            fleet = run_on_cluster(cluster, list(models), targets, options, progress=progress)
            result = comparison_of(fleet)
            data_out = annotate(result.to_dict(), fleet)
        else:
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
                     [_provenance(data_out), *_statements(data_out)]
                     + [f"skipped {s['target']}: {s['reason']}" for s in data_out["skipped"]])
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


def _statements(data_out) -> list[str]:
    """Interleaving, alignment of the deltas, granularity, batch basis and each column's warnings."""
    out = [f"measured together, windows interleaved: {', '.join(g['columns'])} (meter {g['meter']})"
           for g in data_out.get("interleaving", [])]
    if data_out.get("layer_deltas"):
        out.append(f"per-layer deltas aligned {data_out['layer_alignment']}")
    for c in data_out["columns"]:
        name = f"{_basename(c['model'])} @ {c['target']}"
        if c.get("granularity") == "onnx-node":
            out.append(f"{name}: per ONNX node (no node-to-module map)")
        if c.get("fused_share"):
            out.append(f"{name}: {c['fused_share']:.1%} of kernel time in subgraphs the provider fused into one kernel")
        out += [f"{name}: {n}" for n in c.get("notes") or []]
    batches = sorted({c.get("batch") or 1 for c in data_out["columns"]})
    if batches != [1]:
        out.append(f"batch {'/'.join(map(str, batches))}: energy per inference is per sample (a call's joules / "
                   "batch); latency per call")
    return out


def _basename(p: str) -> str:
    return p.replace("\\", "/").rsplit("/", 1)[-1]


def _summary_rows(data_out):
    header = ["model", "target", "precision", "ms/call", "x first", "mJ/inference", "95% CI", "x first", "W",
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
    header = ["layer (first column's costliest first)", "ms", "mJ"] + [h for n in names for h in (f"Δms {n}", f"ΔmJ {n}")]
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

    from toolchain.core.host import describe_machine

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
                      f"({m.meter.source}), {m.repeats} windows; on {describe_machine(c.get('host'))}"
                      + (f" ({len(c['attempts'])} attempts)" if len(c.get("attempts") or []) > 1 else ""))
    for s in data_out["skipped"]:
        console.print(f"  [yellow]skipped[/] {s['target']}: {s['reason']}")
    for line in _statements(data_out):
        console.print(f"  {line}")
    dheader, drows = _delta_rows(data_out, top)
    if drows:
        d = Table(title=f"per-layer deltas against the first column (top {len(drows)})")
        for h in dheader:
            d.add_column(h, justify="left" if h.startswith("layer") else "right", overflow="fold")
        for row in drows:
            d.add_row(*[str(x) for x in row])
        console.print(d)
    for f in data_out.get("files", []):
        console.print(f"  wrote {f}")
