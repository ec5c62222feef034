"""Profiling a model on a target: measured latency and energy (no profiler on), a separate profiled run
for the per-layer split, and the cost table; and comparisons of models across targets.

Both ``toolchain profile`` and ``toolchain compare`` (and the pipeline, and fleet workers) call these
functions. Any ONNX file profiles: with the node-to-module map ``toolchain export`` stores, per module;
without it, per ONNX node (the table's ``granularity`` says which).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import MeterUnavailableError, ToolchainError, option
from toolchain.core.host import machine_info, provenance_versions
from toolchain.energy import Meter, open_meter
from toolchain.formats.costs import CostTable, grams_co2e_per_1000
from toolchain.profile.attribution import attribute
from toolchain.profile.deltas import alignment, layer_deltas
from toolchain.profile.measure import Measurement, measure
from toolchain.profile.options import ProfileOptions

__all__ = ["Comparison", "ProfileOptions", "build_table", "compare_models", "profile_model"]


def make_feeds(model_path: str | Path, options: ProfileOptions) -> tuple[dict[str, np.ndarray], str]:
    """One batch of inputs for ``model_path``: the first ``batch`` samples of ``options.data`` (any data
    spec :func:`toolchain.data.load_dataset` takes), or synthetic inputs when no data is given."""
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset

    spec = options.data or "random"
    ds = load_dataset(spec, model_path, DataOptions(samples=options.batch, seq_len=options.seq_len))
    if len(ds) < options.batch:
        raise ToolchainError(f"{spec}: {len(ds)} samples, fewer than the batch size {options.batch}")
    return next(ds.batches(options.batch)), ds.source


def target_meter(target, options: ProfileOptions) -> Meter:
    """Open the meter ``options.meter`` names, else the first readable one of the target's meters (listed
    in order of preference). When none can be read, :class:`MeterUnavailableError` says why and how to
    fix it, and that ``--meter estimate`` exists."""
    names = [options.meter] if options.meter else list(target.meters or ["estimate"])
    first: MeterUnavailableError | None = None
    for name in names:
        try:
            return open_meter(name, options.meter_options)
        except MeterUnavailableError as exc:
            first = first or MeterUnavailableError(f"power meter {name!r} of target {target.name!r}: {exc.message}",
                                                   hint=exc.hint)
    assert first is not None
    extra = "" if names == ["estimate"] else ("; or pass " + option("--meter estimate", "meter='estimate'")
                                                + " for a figure labelled as an estimate")
    raise MeterUnavailableError(first.message, hint=(first.hint or "") + extra)


def check_model(model_path: str | Path) -> bool:
    """Check before measuring that ``model_path`` is a readable ONNX model whose external data is all there
    (one-line :class:`ToolchainError` otherwise); True when it carries the export's node-to-module map
    (rows per module), False when not (rows per ONNX node)."""
    from toolchain.core.onnxfile import model_metadata
    from toolchain.formats.nodemap import MAP_KEY

    return MAP_KEY in model_metadata(model_path)


def check_usable(target) -> None:
    from toolchain.targets.host import usable

    ok, reason = usable(target)
    if not ok:
        raise ToolchainError(f"target {target.name!r} is not usable on this machine: {reason}",
                             hint="`toolchain targets` lists the targets and why each is or is not usable")


def session_for(model_path: str | Path, target, threads: int | None, *, alternating: bool = False):
    """A session of ``model_path`` on ``target``; ``alternating=True`` when it is measured alternately with
    others (thread-pool spinning off, :func:`toolchain.runtime.session.create_session`)."""
    from toolchain.runtime.session import create_session

    return create_session(model_path, target.provider_names(), threads=threads or target.threads or None,
                          provider_options=target.provider_options(), alternating=alternating)


def model_info(model_path: str | Path, feeds: dict[str, np.ndarray], data_source: str) -> dict[str, Any]:
    from toolchain.core.fsio import sha256_file
    from toolchain.core.onnxfile import read_provenance

    prov = read_provenance(model_path)
    quant = prov.get("quantization")
    return {"path": str(model_path), "name": Path(model_path).name, "sha256": sha256_file(model_path),
            "source": prov.get("source"), "source_kind": prov.get("source_kind"),
            "source_hash": prov.get("source_hash"),
            "precision": "int8" if quant else "fp32",
            "quantization": quant.get("label") if isinstance(quant, dict) else None,
            "inputs": {k: list(v.shape) for k, v in feeds.items()}, "data": data_source}


def target_info(target) -> dict[str, Any]:
    return {"name": target.name, "path": str(target.path) if target.path else None,
            "providers": target.provider_names(), "threads": target.threads,
            "carbon_g_per_kwh": target.carbon_g_per_kwh, "carbon_source": target.carbon_source}


def build_table(model_path: str | Path, target, measurement: Measurement, feeds: dict[str, np.ndarray],
                data_source: str, options: ProfileOptions, workdir: str | Path) -> CostTable:
    """The profiled run (separate from the energy windows) and the cost table around ``measurement``."""
    from toolchain.profile.trace import profile_nodes

    prof = profile_nodes(model_path, feeds, providers=target.provider_names(), runs=options.profile_runs,
                         warmup=2, threads=options.threads or target.threads or None, workdir=workdir,
                         provider_options=target.provider_options(), reference=True)
    joules = measurement.joules  # per sample
    rows, summary = attribute(model_path, prof, feeds, (joules.mean, joules.std))
    # the reference for the per-layer sum: an unprofiled session alternated run by run with the profiled one
    # (the machine state of the energy windows a minute earlier may differ); the windows' latency is beside it
    # Medians: on a shared machine a few slow runs would otherwise decide the comparison.
    e2e = float(np.median(prof.plain_wall_us)) / 1000
    profiled_ms = float(np.median(prof.profiled_wall_us)) / 1000
    per_run = [sum(n.per_run_us[i] for n in prof.nodes if len(n.per_run_us) == prof.runs) for i in range(prof.runs)]
    layers_ms = float(np.median(per_run)) / 1000
    profile = {"runs": prof.runs, **summary, "layers_sum_ms": layers_ms, "end_to_end_ms": e2e,
               "statistic": "median over runs", "latency_per": f"call (one batch of {options.batch})",
               "end_to_end_source": "an unprofiled session alternated run by run with the profiled one (spinning off in both)",
               "gap_pct": 100 * (layers_ms - e2e) / e2e, "windows_latency_ms": measurement.latency.median,
               "profiled_run_ms": profiled_ms, "profiler_overhead_pct": 100 * (profiled_ms - e2e) / e2e,
               "graph_for_names": ("optimized model" if prof.optimized_model else "EP context model"
                                   if prof.context_model else "none (the provider compiled subgraphs)")}
    m = measurement.to_dict()
    carbon = grams_co2e_per_1000(joules.mean, target.carbon_g_per_kwh)
    m["gco2e_per_1000"] = {"mean": carbon, "ci95": [grams_co2e_per_1000(x, target.carbon_g_per_kwh) for x in joules.ci95],
                           "kind": measurement.kind, "intensity_g_per_kwh": target.carbon_g_per_kwh,
                           "intensity_source": target.carbon_source}
    meter = {"name": measurement.meter, "kind": measurement.kind, "source": measurement.source,
             "idle_watts": measurement.idle_watts}
    return CostTable(model=model_info(model_path, feeds, data_source), target=target_info(target), meter=meter,
                     measurement=m, profile=profile, rows=rows, versions=provenance_versions(),
                     granularity=summary["granularity"], host=machine_info())


def profile_model(model_path: str | Path, target, options: ProfileOptions,
                  progress: Callable[[str], None] | None = None) -> CostTable:
    """Measure ``model_path`` on ``target`` and return its cost table: per module when the model carries
    the export's node-to-module map, else per ONNX node."""
    check_model(model_path)
    check_usable(target)
    feeds, source = make_feeds(model_path, options)
    meter = target_meter(target, options)
    try:
        result = _measure_alone(model_path, target, feeds, meter, options, progress)
    finally:
        meter.close()
    if progress:
        progress("profiling per-node kernel times")
    with tempfile.TemporaryDirectory(prefix="toolchain-prof-") as work:
        return build_table(model_path, target, next(iter(result.values())), feeds, source, options, work)


def _measure_alone(model_path, target, feeds, meter, options: ProfileOptions, progress) -> dict[str, Measurement]:
    """The energy windows, in a session that is gone when this returns: an idle session's spinning thread
    pool would slow the profiled session that follows."""
    session = session_for(model_path, target, options.threads)
    return measure({Path(model_path).name: lambda: session.run(None, feeds)}, meter, repeats=options.repeats,
                   window_s=options.window_s, warmup=options.warmup,
                   idle_s=target.idle_seconds if options.idle_s is None else options.idle_s,
                   batch=options.batch, progress=progress)


@dataclass
class Comparison:
    """Models x targets: a cost table per (model, target) measured here, targets skipped with why, and
    which columns were measured in one interleaved run (``interleaving``: one entry per ``measure`` call,
    ``{"meter", "columns": ["<model> @ <target>", ...], "targets"}``)."""

    tables: dict[tuple[str, str], CostTable]
    skipped: dict[str, str]
    interleaving: list[dict[str, Any]] = field(default_factory=list)

    def columns(self) -> list[tuple[str, str]]:
        return list(self.tables)

    def to_dict(self) -> dict[str, Any]:
        cols = self.columns()
        base = self.tables[cols[0]] if cols else None
        out = []
        for key in cols:
            t = self.tables[key]
            lat = t.measured.latency_ms.mean_ms
            j = t.joules_per_inference
            out.append({
                "model": key[0], "target": key[1], "precision": t.model["precision"], "sha256": t.model["sha256"],
                "granularity": t.granularity, "batch": t.measurement.get("batch"),
                "per_inference": t.measurement.get("per_inference"),
                "latency_ms": t.measurement["latency_ms"], "latency_ms_per_sample": t.measurement.get("latency_ms_per_sample"),
                "joules_per_inference": t.measurement["joules_per_inference"],
                "watts": t.measurement["watts"], "gco2e_per_1000": t.measurement["gco2e_per_1000"],
                "meter": t.meter, "repeats": t.measurement["repeats"], "cpu_load": t.measurement.get("cpu_load"),
                "notes": t.measurement.get("notes", []), "fused_share": t.profile.get("fused_share"),
                "host": t.host,
                "latency_ratio": lat / base.measured.latency_ms.mean_ms if base else None,
                "energy_ratio": (j / base.joules_per_inference) if base and base.joules_per_inference else None,
            })
        return {"columns": out, "skipped": [{"target": k, "reason": v} for k, v in self.skipped.items()],
                "interleaving": self.interleaving, "layer_alignment": alignment(list(self.tables.values()),
                                                                  [f"{Path(m).name} @ {t}" for m, t in self.tables]),
                "layer_deltas": self.layer_deltas()}

    def layer_deltas(self) -> list[dict[str, Any]]:
        """Per-layer latency and energy of each column against the first, costliest first
        (:func:`toolchain.profile.deltas.layer_deltas`: by module, or by ONNX node name when a column is
        per ONNX node)."""
        return layer_deltas(self.tables)


def compare_models(model_paths: list[str | Path], targets: list, options: ProfileOptions,
                   progress: Callable[[str], None] | None = None) -> Comparison:
    """Measure every model on every usable target. Targets not usable here (provider, host, or meter) are
    skipped with their reason. The usable targets that read the same meter (same name, source and
    options) are measured together: all their (model, target) candidates in one ``measure`` call, windows
    interleaved so that drift hits them alike, every session created with thread-pool spinning off
    (``alternating=True``: an idle session's spinning workers would slow the one being measured); the
    idle baseline is the longest of those targets'. :attr:`Comparison.interleaving` says which were."""
    names = [str(p) for p in model_paths]
    if len(set(Path(n).resolve() for n in names)) != len(names):
        raise ToolchainError("the same model is given twice")
    for name in names:
        check_model(name)
    skipped: dict[str, str] = {}
    groups: dict[tuple, list[tuple[Any, Meter]]] = {}
    for target in targets:
        try:
            check_usable(target)
            meter = target_meter(target, options)
        except ToolchainError as exc:
            skipped[target.name] = str(exc)
            continue
        groups.setdefault((meter.name, meter.source, repr(options.meter_options)), []).append((target, meter))
    if not groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ToolchainError(f"no target is usable here ({reasons})")
    tables: dict[tuple[str, str], CostTable] = {}
    interleaving = []
    for members in groups.values():
        for _, extra in members[1:]:
            extra.close()  # one meter reads the whole group
        results, feeds_of, sources = _measure_group(names, members, options, progress)
        interleaving.append({"meter": members[0][1].name, "targets": [t.name for t, _ in members],
                             "columns": [f"{Path(p).name} @ {t.name}" for t, _ in members for p in names]})
        for target, _ in members:
            for path in names:
                if progress:
                    progress(f"{Path(path).name} @ {target.name}: per-node kernel times")
                with tempfile.TemporaryDirectory(prefix="toolchain-prof-") as work:
                    tables[(path, target.name)] = build_table(path, target, results[(path, target.name)],
                                                              feeds_of[path], sources[path], options, work)
    ordered = {(p, t.name): tables[(p, t.name)] for t in targets for p in names if (p, t.name) in tables}
    return Comparison(ordered, skipped, interleaving)


def _measure_group(names: list[str], members: list[tuple[Any, Meter]], options: ProfileOptions, progress):
    """One interleaved ``measure`` of every model on every target of ``members`` (which share a meter)."""
    meter = members[0][1]
    try:
        feeds_of, sources, sessions = {}, {}, {}
        for path in names:
            feeds_of[path], sources[path] = make_feeds(path, options)
        for target, _ in members:
            for path in names:
                sessions[(path, target.name)] = session_for(path, target, options.threads, alternating=True)
        labels = {key: f"{key[0]} @ {key[1]}" for key in sessions}
        candidates = {labels[key]: (lambda s=s, f=feeds_of[key[0]]: s.run(None, f)) for key, s in sessions.items()}
        idle = max(t.idle_seconds for t, _ in members) if options.idle_s is None else options.idle_s
        measured = measure(candidates, meter, repeats=options.repeats, window_s=options.window_s,
                           warmup=options.warmup, batch=options.batch, progress=progress, idle_s=idle)
    finally:
        meter.close()
    sessions.clear()
    return {key: measured[label] for key, label in labels.items()}, feeds_of, sources
