"""toolchain profile"""

from __future__ import annotations

import click

from toolchain.commands.common import FiniteFloatRange, emit, is_quiet, json_option, json_safe_stdout, status
from toolchain.energy import METERS
from toolchain.profile.limits import (
    MAX_BATCH,
    MAX_IDLE_S,
    MAX_PROFILE_RUNS,
    MAX_REPEATS,
    MAX_SEQ_LEN,
    MAX_WARMUP,
    MAX_WATTS,
    MAX_WINDOW_S,
)


def check_threads_option(ctx, param, value):
    """Click callback of --threads: at most this machine's cores (os.cpu_count()), one line otherwise."""
    from toolchain.runtime.session import max_threads

    if value is not None and value > max_threads():
        raise click.BadParameter(f"{value} is more than this machine's {max_threads()} CPU cores "
                                 f"(use at most {max_threads()})")
    return value


def measure_options(f):
    """Options shared by `profile` and `compare`: the meter, the windows, the inputs."""
    options = [
        click.option("--meter", type=click.Choice(list(METERS)),
                     help="Power meter (default: the target's). `estimate` is a model, not a measurement, "
                          "and every figure it produces is labelled estimated."),
        click.option("--watts", type=FiniteFloatRange(0, MAX_WATTS, min_open=True),
                     help="With --meter estimate: the device's power draw in watts (else CPU time x per-core watts "
                          "from a TDP table; at most 100000)."),
        click.option("--watts-per-core", type=FiniteFloatRange(0, MAX_WATTS, min_open=True),
                     help="With --meter estimate: watts per busy core, instead of the TDP table's figure."),
        click.option("--data", metavar="DATA", help="Inputs to run: the first --batch samples of an .npz, image folder, "
                     ".txt file or builtin:mnist / builtin:drugreviews (default: synthetic inputs of the exported shapes)."),
        click.option("--batch", type=click.IntRange(1, MAX_BATCH), default=1, show_default=True, help="Batch size of one inference."),
        click.option("--seq-len", type=click.IntRange(1, MAX_SEQ_LEN), default=128, show_default=True, help="Token length for text models."),
        click.option("--repeats", type=click.IntRange(2, MAX_REPEATS), default=5, show_default=True,
                     help="Measured windows per model (mean, sd and 95% interval are over these)."),
        click.option("--window", "window_s", type=FiniteFloatRange(0.05, MAX_WINDOW_S), default=1.0, show_default=True,
                     help="Seconds per window (at least ten times the meter's update interval)."),
        click.option("--idle", "idle_s", type=FiniteFloatRange(0, MAX_IDLE_S), help="Seconds of idle baseline before measuring "
                     "(default: the target's; 0 turns it off, and net equals gross)."),
        click.option("--warmup", type=click.IntRange(0, MAX_WARMUP), default=5, show_default=True, help="Untimed calls first."),
        click.option("--profile-runs", type=click.IntRange(1, MAX_PROFILE_RUNS), default=20, show_default=True,
                     help="Runs of the separate ORT-profiler pass that splits time per layer."),
        click.option("--threads", type=click.IntRange(1), callback=check_threads_option,
                     help="Intra-op threads, at most this machine's cores (default: the target's, else ORT's)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def profile_options(meter, watts, watts_per_core, data, batch, seq_len, repeats, window_s, idle_s, warmup,
                    profile_runs, threads):
    from toolchain.energy import MeterOptions
    from toolchain.profile.run import ProfileOptions

    if (watts or watts_per_core) and meter != "estimate":
        raise click.UsageError("--watts and --watts-per-core only apply to --meter estimate")
    return ProfileOptions(meter=meter, meter_options=MeterOptions(watts=watts, watts_per_core=watts_per_core),
                          repeats=repeats, window_s=window_s, warmup=warmup, idle_s=idle_s,
                          profile_runs=profile_runs, threads=threads, batch=batch, data=data, seq_len=seq_len)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "target_spec", metavar="TARGET",
              help="A built-in target (`toolchain targets`) or a TOML file (default: this machine's CPU).")
@measure_options
@click.option("--cluster", metavar="HOST:PORT",
              help="Profile on a node of this Ray cluster that offers the target (`toolchain worker`); the model ships "
                   "through Ray's object store and the cost table is written here. Needs --target.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Directory for costs.json, costs.csv, energy.png and energy.html (default: MODEL_STEM.TARGET.profile).")
@click.option("--top", type=click.IntRange(1), default=15, show_default=True, help="Layers shown in the table and chart.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
@json_option
@click.pass_context
def profile(ctx, model, target_spec, meter, watts, watts_per_core, data, batch, seq_len, repeats, window_s, idle_s,
            warmup, profile_runs, threads, cluster, output, top, force, as_json) -> None:
    """Measure MODEL's latency and energy on a target, and where they go, layer by layer.

    \b
    1. Warm up, measure an idle baseline, then REPEATS windows of inferences long enough
       for the power meter; report latency, joules per inference (gross and net of idle)
       and watts, each with its spread, and gCO2e per 1,000 inferences at the target's
       grid intensity.
    2. A separate ONNX Runtime profiler run (never during the energy windows) gives each
       node's kernel time; nodes are mapped to PyTorch modules through the map the export
       stored (any other ONNX file: rows per ONNX node), and the net energy is split by
       time share (method `time-share`). A subgraph a provider compiles into one kernel
       (OpenVINO, TensorRT) is one row, marked as fused.
    3. Writes a versioned cost table (JSON, CSV) and a chart (PNG, HTML).

    \b
    With --batch N, energy is per inference (one sample: a call's joules / N), latency
    per call. A window during which other processes used over 10% of the CPUs is warned of.

    \b
    With --cluster, the job runs on a node of a Ray cluster that offers the target (its
    onnxruntime build, meter and CPU or GPU, named in the table's `host`); a node lost
    mid-job is replaced once by another node with the target.

    \b
    Examples:
      toolchain profile resnet50.onnx --target x86-cpu
      toolchain profile resnet50.onnx --target openvino-cpu --cluster 10.0.0.5:6379
      toolchain profile resnet50.onnx --target x86-cpu --meter estimate   # no RAPL here
      toolchain profile model.int8.onnx --target cuda --batch 8 --json
    """
    from pathlib import Path

    from toolchain.core.fsio import write_files
    from toolchain.profile.run import profile_model
    from toolchain.report.charts import html_page, layer_energy_png, table_notes, table_rows
    from toolchain.targets.host import default_target_name
    from toolchain.targets.target import load_target

    quiet = is_quiet(ctx, as_json)
    options = profile_options(meter, watts, watts_per_core, data, batch, seq_len, repeats, window_s, idle_s, warmup,
                              profile_runs, threads)
    if cluster and not target_spec:
        raise click.UsageError("with --cluster, name the target to run on (--target T)")
    target = load_target(target_spec or default_target_name())
    if not Path(model).is_file():
        raise click.BadParameter(f"{model}: no such file", param_hint="MODEL")
    out_dir = Path(output) if output else Path(f"{Path(model).stem}.{target.name}.profile")
    with json_safe_stdout(as_json), status(f"profiling {model} on {target.name}", quiet=quiet) as progress:
        table = (_on_cluster(cluster, model, target, options, progress) if cluster
                 else profile_model(model, target, options, progress=progress))
        png = layer_energy_png(table, top)
        header, rows = table_rows(table)
        title = "Per-ONNX-node cost table" if table.granularity == "onnx-node" else "Per-layer cost table"
        page = html_page(f"{table.model['name']} on {target.name}", png, [(title, header, rows)], table_notes(table))
        written = write_files({"costs.json": table.to_json(), "costs.csv": table.to_csv(), "energy.png": png,
                                 "energy.html": page}, out_dir, force, inputs=(model,))
    data_out = table.to_dict()
    data_out["files"] = [str(p) for p in written]
    emit(data_out, as_json, lambda console: _render(console, table, top, written))


def _on_cluster(address, model, target, options, progress):
    """The cost table of ``model`` on ``target`` measured by a node of the cluster at ``address``."""
    from toolchain.core.errors import ToolchainError
    from toolchain.fleet.dispatch import run_on_cluster
    from toolchain.fleet.results import tables_of

    fleet = run_on_cluster(address, [model], [target], options, progress=progress)
    reason = fleet.lost.get(target.name) or fleet.failed.get(target.name)
    if reason:
        raise ToolchainError(f"target {target.name} on the cluster at {address}: {reason}")
    return tables_of(fleet)[(str(model), target.name)]


def _render(console, table, top, written) -> None:
    from rich.table import Table

    from toolchain.core.host import describe_machine
    from toolchain.report.charts import fused_note, table_rows

    m = table.measured
    meter = table.meter_info
    kind = table.energy_kind
    lat = m.latency_ms
    j = m.joules_per_inference.net
    jg = m.joules_per_inference.gross
    w = m.watts.gross
    co2 = m.gco2e_per_1000
    label = "[bold yellow]ESTIMATED[/]" if kind == "estimated" else "[green]measured[/]"
    console.print(f"[bold]{table.model['name']}[/] ({table.model['precision']}, batch {m.batch}) on "
                  f"[bold]{table.target['name']}[/] ({', '.join(table.target['providers'])})")
    console.print(f"  energy {label}: meter {meter.name}: {meter.source}")
    console.print(f"  machine      {describe_machine(table.host)}")
    per_sample = (f"; {m.latency_ms_per_sample.mean_ms:.3f} ms per sample"
                  if (m.batch or 1) > 1 and m.latency_ms_per_sample.mean_ms is not None else "")
    console.print(f"  latency      {lat.mean_ms:.3f} ms mean per call (batch {m.batch}), sd {lat.std_ms:.3f}, 95% CI "
                  f"{lat.ci95_ms[0]:.3f}-{lat.ci95_ms[1]:.3f} ({lat.runs} calls in {m.repeats} windows){per_sample}")
    console.print(f"  energy       {j.mean * 1000:.4g} mJ/inference net of idle ({kind}"
                  f"{', per sample' if (m.batch or 1) > 1 else ''}), sd {j.std * 1000:.2g}, "
                  f"95% CI {j.ci95[0] * 1000:.4g}-{j.ci95[1] * 1000:.4g}, CV {j.cv_pct:.1f}%; "
                  f"gross {jg.mean * 1000:.4g} mJ")
    console.print(f"  power        {w.mean:.3g} W gross ({kind}); idle baseline {meter.idle_watts:.3g} W")
    console.print(f"  carbon       {co2.mean:.4g} gCO2e per 1,000 inferences ({kind}) at "
                  f"{co2.intensity_g_per_kwh} gCO2e/kWh ({co2.intensity_source})")
    p = table.profile
    by_node = table.granularity == "onnx-node"
    what = "ONNX nodes" if by_node else "modules"
    console.print(f"  layers       {len(table.rows)} {what} from {p['kernels']} kernels ({p['runs']} profiled runs); "
                  f"per run they add up to {p['layers_sum_ms']:.3f} ms against {p['end_to_end_ms']:.3f} ms end to end "
                  f"with the profiler off ({p['gap_pct']:+.1f}%, medians); unmapped {p['unmapped_share']:.1%}")
    if by_node:
        console.print("  [yellow]granularity[/]  per ONNX node: the model has no node-to-module map (not exported by "
                      "`toolchain export`)")
    if fused_note(table):
        console.print(f"  [yellow]fused[/]        {fused_note(table)}")
    for note in m.notes:
        console.print(f"  [yellow]note[/]         {note}")
    if m.cpu_load.checked:
        console.print(f"  other load   at most {m.cpu_load.max_other_share:.0%} of the {m.cpu_load.cpus} CPUs in a window "
                      f"(over {m.cpu_load.threshold:.0%} is warned of)")
    elif m.cpu_load.source:
        console.print(f"  other load   {m.cpu_load.source}")
    header, rows = table_rows(table, top, width=max(24, console.width - 112))
    header[header.index(f"energy mJ ({kind})")] = "mJ"
    t = Table(title=f"costliest {min(top, len(table.rows))} of {len(table.rows)} "
                    f"{'ONNX nodes (per-ONNX-node granularity: no node-to-module map)' if by_node else 'layers'} "
                    f"(energy {kind}, split by {table.method})")
    first = header[0]
    for h in header:
        t.add_column(h, justify="left" if h in (first, "type", "ops") else "right", no_wrap=h == first)
    for row in rows:
        t.add_row(*[str(c) for c in row])
    console.print(t)
    for path in written:
        console.print(f"  wrote {path}")
