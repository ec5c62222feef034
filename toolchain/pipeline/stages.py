"""The stages, in the order they run. Each ``stage_NAME(run, out)`` writes its files into ``out`` (a
scratch directory that becomes ``RUN_DIR/NAME/`` once the stage is complete) and returns its metrics;
it reads the earlier stages' files from their directories and their metrics from the manifest.

    baseline  export FP32, split the data (train / calibration / held-out test), profile on the target
    prune     energy-aware pruning fed by the baseline cost table; the scheduler's pruning candidates
    search    the scheduler (:mod:`toolchain.pipeline.search`): the input model is a candidate too
    distill   the chosen student, distilled from the unpruned teacher: the search's, promoted
    export    its ONNX file (the search's, promoted), checked against PyTorch
    quantize  its INT8 file with the chosen configuration of the target's preset (the search's, promoted)
    profile   the deliverable's cost table on the target
    compare   each technique alone beside the full pipeline (:mod:`toolchain.pipeline.variants`)
    report    Markdown, HTML and JSON
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import atomic_write
from toolchain.pipeline.context import (
    SPLIT_FILES,
    Run,
    chosen,
    datasets,
    deliverable,
    is_input,
    onnx_outputs,
    profile_options,
    run_metric,
    source_model,
    student_model,
)
from toolchain.pipeline.recipe import STAGES
from toolchain.pipeline.search import stage_search
from toolchain.pipeline.splits import split_data
from toolchain.pipeline.variants import stage_compare


def _save_npz(path: Path, ds) -> None:
    import numpy as np

    arrays = dict(ds.feeds)
    if ds.labels is not None:
        arrays["labels"] = ds.labels
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _save_costs(path: Path, table) -> None:
    atomic_write(path, lambda f: f.write(table.to_json()), "w")


def stage_baseline(run: Run, out: Path) -> dict[str, Any]:
    """Export the model to ONNX (FP32); split the data into train.npz, calib.npz and eval.npz (the held-out
    test part: :mod:`toolchain.pipeline.splits`); profile the FP32 model on the target (costs.json) and
    evaluate it on the calibration part (what selections compare with) and on the test part (reported)."""
    from toolchain.data.dataset import DataOptions
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.profile.run import profile_model

    r = run.recipe
    loaded = source_model(run)
    run.progress("baseline: exporting FP32")
    export_model(loaded, out / "model.onnx", ExportOptions())
    run.progress("baseline: reading and splitting the data")
    parts, described = split_data(loaded, run.data, run.eval_data, run.calib_data,
                                  DataOptions(samples=r.samples, seq_len=r.seq_len, seed=r.seed,
                                              text_field=r.text_field, label_field=r.label_field))
    for name, ds in zip(parts._fields, parts, strict=True):
        _save_npz(out / SPLIT_FILES[name], ds)
    run.progress("baseline: profiling on the target")
    table = profile_model(out / "model.onnx", run.target, profile_options(run, r.profile_runs, out),
                          progress=run.progress)
    _save_costs(out / "costs.json", table)
    splits = datasets(run, out)
    selection, _ = run_metric(run, out / "model.onnx", splits.calibration,
                              onnx_outputs(out / "model.onnx", splits.calibration))
    metric, name = run_metric(run, out / "model.onnx", splits.test, onnx_outputs(out / "model.onnx", splits.test))
    subset = next((d["subset_of"] for d in described.values() if d["subset_of"]), None)
    return {"metric": metric, "selection_metric": selection, "metric_name": name, "splits": described,
            "eval_samples": len(splits.test), "train_samples": len(splits.train), "data_subset_of": subset,
            "joules_per_inference": table.joules_per_inference, "meter": table.meter}


def _spread(items: list, n: int) -> list:
    """Up to ``n`` of ``items`` evenly spread, the last always included."""
    if len(items) <= n:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)} if n > 1 else {len(items) - 1})
    return [items[i] for i in picks]


def stage_prune(run: Run, out: Path) -> dict[str, Any]:
    """Energy-aware pruning within ``prune_budget`` x ``max_accuracy_drop`` (the pruned model in ``out``);
    ``within-budget/``: its most pruned step within ``max_accuracy_drop`` (the "pruning only" variant);
    ``candidates/pN``: ``search_points`` of its kept steps, spread out, for the scheduler."""
    import copy

    from toolchain.formats.costs import CostTable
    from toolchain.prune import PruneConfig, costs_for, prune_model, save_pruned

    r = run.recipe
    loaded = source_model(run)
    table = CostTable.load(run.dir("baseline") / "costs.json")
    costs = costs_for(table, loaded, loaded.module, run.target.name, "energy")
    train, held, _ = datasets(run)  # steps are judged on the calibration part, never the test part
    config = PruneConfig(importance=r.importance, target_energy_reduction=r.target_energy_reduction,
                         max_accuracy_drop=r.max_accuracy_drop * r.prune_budget, step=r.prune_step,
                         finetune_epochs=r.finetune_epochs, max_steps=r.max_steps, round_to=run.target.round_to,
                         seed=r.seed)
    meta = {"target": run.target.name}
    kept: list[tuple[Any, Any]] = []  # (step record, model copy) after every kept step
    result = prune_model(loaded, config, train, held, costs=costs, progress=lambda t: run.progress(f"prune: {t}"),
                         on_kept=lambda step, module: kept.append((step, copy.deepcopy(module))))
    save_pruned(result, loaded, run.model, out, config, meta, force=True)
    # pruning alone at the pipeline's budget (the "pruning only" variant): its most pruned step within it
    within = [(step, module) for step, module in kept if result.base_metric - step.accuracy <= r.max_accuracy_drop]
    step0, module0 = within[-1] if within else (None, copy.deepcopy(loaded.module))
    macs0 = (step0.macs or result.macs_after) if step0 else result.macs_before
    save_pruned(replace(result, module=module0, final_metric=step0.accuracy if step0 else result.base_metric,
                        reduction=step0.predicted_reduction if step0 else 0.0,
                        predicted_reduction=step0.predicted_reduction if step0 else 0.0, widths={},
                        macs_after=macs0, macs_reduction=1 - macs0 / max(result.macs_before, 1),
                        params_after=step0.params if step0 else result.params_before,
                        steps=[x for x in result.steps if step0 and x.step <= step0.step]),
                loaded, run.model, out / "within-budget", config, meta, force=True)
    candidates = []
    (out / "candidates").mkdir()
    for n, (step, module) in enumerate(_spread(kept, r.search_points)):
        snapshot = replace(result, module=module, final_metric=step.accuracy, reduction=step.predicted_reduction,
                           predicted_reduction=step.predicted_reduction, params_after=step.params,
                           macs_after=step.macs or result.macs_after, widths={},
                           macs_reduction=1 - (step.macs or result.macs_after) / max(result.macs_before, 1),
                           steps=[x for x in result.steps if x.step <= step.step])
        save_pruned(snapshot, loaded, run.model, out / "candidates" / f"p{n}", config, meta, force=True)
        candidates.append({"dir": f"candidates/p{n}", "step": step.step, "metric": step.accuracy,
                           "predicted_energy_reduction": step.predicted_reduction, "params": step.params,
                           "macs": step.macs})
    return {"base_metric": result.base_metric, "metric": result.final_metric, "params_before": result.params_before,
            "params_after": result.params_after, "macs_before": result.macs_before, "macs_after": result.macs_after,
            "predicted_energy_reduction": result.reduction, "macs_reduction": result.macs_reduction,
            "widths": result.widths, "steps": len(result.steps),
            "kept_steps": sum(s.kept for s in result.steps), "candidates": candidates}


def _promote(src: Path, dest: Path) -> None:
    """Copy the search's file ``src`` into this stage's scratch directory (hard-linked where possible:
    the search stage's files are never written again)."""
    import os
    import shutil

    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _skipped(why: str) -> dict[str, Any]:
    return {"skipped": why}


def stage_distill(run: Run, out: Path) -> dict[str, Any]:
    """The chosen pruned student, distilled from the unpruned teacher at the chosen temperature: the
    search's own student, promoted (not distilled again). Nothing where the input model was chosen."""
    c = chosen(run)
    if is_input(c):
        return _skipped("the chosen candidate is the input model: nothing to distill")
    work = run.dir("search") / c["work"]
    for name in ("student.pt", "distill.json"):
        if (work / name).is_file():
            _promote(work / name, out / name)
    return dict(c["distill"]) | {"student": c["prune_dir"], "temperature": c["temperature"],
                                  "promoted_from": f"search/{c['work']}"}


def stage_export(run: Run, out: Path) -> dict[str, Any]:
    """The distilled student's ONNX file from the search, promoted and checked against PyTorch."""
    from toolchain.export.exporter import ExportOptions, check_parity

    c = chosen(run)
    if is_input(c):
        return _skipped("the chosen candidate is the input model: the baseline's export is the artifact")
    loaded = student_model(run.dir("prune") / c["prune_dir"], run.dir("distill") / "student.pt")
    searched = run.dir("search") / c["work"] / "model.onnx"
    if searched.is_file():
        _promote(searched, out / "model.onnx")
    else:  # a search directory without it (written before the FP32 file was kept): export the student again
        from toolchain.export.exporter import export_model

        export_model(loaded, out / "model.onnx", ExportOptions(parity=False))
    parity = check_parity(loaded, out / "model.onnx", ExportOptions())
    bad = [p for p in parity if not p.passed]
    if bad:
        raise ToolchainError(f"the distilled student's ONNX file disagrees with PyTorch ({bad[0]})",
                             hint="re-run from the search stage")
    return {"parity": [asdict(p) for p in parity], "size_bytes": (out / "model.onnx").stat().st_size,
            "promoted_from": f"search/{c['work']}/model.onnx" if searched.is_file() else None}


def stage_quantize(run: Run, out: Path) -> dict[str, Any]:
    """The INT8 artifact: the search's INT8 file of the chosen candidate (or, where the chosen student is
    FP32, its best-measured INT8 counterpart), promoted. Nothing where the input FP32 model was chosen."""
    search = run.metrics("search")
    c = chosen(run)
    int8 = c if c["quant"] else search.get("int8_counterpart")
    if not int8:
        return _skipped("the chosen candidate is the input model in FP32: nothing to quantize")
    _promote(run.dir("search") / int8["onnx"], out / "model.int8.onnx")
    return dict(int8["quantize"]) | {"promoted_from": f"search/{int8['onnx']}", "candidate": int8["label"]}


def stage_profile(run: Run, out: Path) -> dict[str, Any]:
    """The deliverable's cost table on the target (costs.json)."""
    from toolchain.profile.run import profile_model

    artifact = deliverable(run)
    if artifact == run.dir("baseline") / "model.onnx":  # the input, delivered unchanged: profiled already
        _promote(run.dir("baseline") / "costs.json", out / "costs.json")
        from toolchain.formats.costs import CostTable

        table = CostTable.load(out / "costs.json")
        return {"artifact": str(artifact.relative_to(run.root)), "precision": table.model["precision"],
                "joules_per_inference": table.joules_per_inference, "meter": table.meter,
                "promoted_from": "baseline/costs.json"}
    table = profile_model(artifact, run.target, profile_options(run, run.recipe.profile_runs), progress=run.progress)
    _save_costs(out / "costs.json", table)
    # a cost-table read by string key (to be converted to a formats.costs accessor)
    return {"artifact": str(artifact.relative_to(run.root)), "precision": table.model["precision"],
            "joules_per_inference": table.joules_per_inference, "meter": table.meter}


def report_title(run: Run, rows: list[dict[str, Any]]) -> str:
    """The report's title, from the measurements: what was delivered, its energy, latency and metric
    against the input on the held-out test part."""
    from toolchain.formats.costs import MeasurementRecord

    c = chosen(run)
    base, last = rows[0], rows[-1]
    mb, ml = (MeasurementRecord.from_dict(r["measurement"]) for r in (base, last))
    if is_input(c) and not c["quant"]:
        what = "nothing beat the input; delivered unchanged"
    else:
        parts = [] if is_input(c) else [f"pruned ({last['params']:,} of {base['params']:,} weights)",
                                        f"distilled (T={c['temperature']:g})"]
        what = "delivered " + ", ".join([*parts, c["quant"] or "FP32"])
    test = run.metrics("compare").get("evaluated_on") or {}
    energy = ml.joules_per_inference.net.mean / mb.joules_per_inference.net.mean - 1
    latency = ml.latency_ms.median_ms / mb.latency_ms.median_ms - 1
    return (f"{run.model} on {run.target.name}: {what}: energy {energy:+.0%}, latency {latency:+.0%}, "
            f"{last['metric_name']} {last['metric'] - base['metric']:+.2f} points on {test.get('source', 'held-out data')} "
            f"({test.get('samples', '?')} samples)")


def predicted_vs_measured(run: Run, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pruning-only variant's energy reduction as the cost table predicted it and as measured."""
    from toolchain.formats.costs import MeasurementRecord

    pruned = run.dir("prune") / "within-budget" / "pruned.json"
    by_name = {r["name"]: r for r in rows}
    if not pruned.is_file() or "pruning only" not in by_name:
        return None
    result = json.loads(pruned.read_text()).get("result") or {}
    base, only = (MeasurementRecord.from_dict(by_name[n]["measurement"]) for n in ("baseline (FP32)", "pruning only"))
    measured = 1 - only.joules_per_inference.net.mean / base.joules_per_inference.net.mean
    return {"predicted": float(result.get("predicted_reduction") or result.get("reduction") or 0.0),
            "macs": float(result.get("macs_reduction") or 0.0), "measured": measured, "meter": only.kind}


def stage_report(run: Run, out: Path) -> dict[str, Any]:
    """The sustainability report (report.md, report.html, report.json) of the compared variants and the
    scheduler's Pareto front."""
    from toolchain.report import build_report, write_report

    rows = json.loads((run.dir("compare") / "variants.json").read_text())
    search = run.metrics("search")
    best = search["chosen"]
    batch = run.recipe.batch
    inputs = run.manifest.inputs
    splits = run.metrics("baseline").get("splits") or {}
    spec = {"title": report_title(run, rows),
            "model": {"source": run.model, "sha256": inputs.model_hash, "task": inputs.task},
            "target": {"name": run.target.name, "carbon_g_per_kwh": run.target.carbon_g_per_kwh,
                       "carbon_source": run.target.carbon_source},
            "metric_name": rows[0]["metric_name"], "variants": rows,
            "pareto": [{"label": c["label"], "metric": c["metric"], "joules": c["joules"], "latency_ms": c["latency_ms"],
                        "config": {k: c[k] for k in ("prune_step", "predicted_energy_reduction", "temperature", "quant")}}
                       for c in search["candidates"]],
            "stages": [{"name": s, "status": run.stage(s).status, "seconds": run.stage(s).seconds}
                       for s in STAGES if s in run.manifest.stages],
            "notes": [*([f"{run.data} is a subset of {subset}: accuracy here is measured on data the source "
                         "model may have been trained on, not held out (the comparison between variants still "
                         "holds)"] if (subset := run.metrics("baseline").get("data_subset_of")) else []),
                      f"chosen: {search['why']}",
                      *[f"data, {name}: {d['source']}, {d['samples']} samples ({d['how']})" for name, d in splits.items()],
                      "every variant's metric is on the test part (held out: never trained, fine-tuned, distilled, "
                      "calibrated or selected on); the scheduler and pruning chose on the calibration part "
                      "(the Pareto points' metric)",
                      *[f"pruning only: the cost table predicted {pm['predicted']:.1%} less energy, "
                        f"{pm['macs']:.1%} fewer MACs; measured {pm['measured']:.1%} ({pm['meter']})"
                        for pm in [predicted_vs_measured(run, rows)] if pm],
                      f"every variant measured at batch {batch} on {run.target.name}: J/inference is per sample "
                      f"(a call's joules / {batch}); latency is per call (one batch of {batch})",
                      f"scheduler: {len(search['candidates'])} candidates (the input FP32 and INT8; pruning point x "
                      f"distillation temperature x INT8 configuration) measured on {run.target.name}; chosen "
                      f"{best['label']} (objective {best['objective']:.3f} = {search['objective']}; weights "
                      f"{search['weights']}; grid {search['carbon_g_per_kwh']} gCO2e/kWh)",
                      # the whole recipe: every field is declared by an earlier stage, so this stage's key covers it
                      f"recipe: {json.dumps(run.manifest.recipe)}"]}
    report = build_report(spec)
    write_report(report, out, force=True)
    return {"headline": report.get("headline"), "title": report["title"],
            "pruning_predicted_vs_measured": predicted_vs_measured(run, rows)}


STAGE_FUNCS: dict[str, Callable[[Run, Path], dict[str, Any]]] = {
    "baseline": stage_baseline, "prune": stage_prune, "search": stage_search, "distill": stage_distill,
    "export": stage_export, "quantize": stage_quantize, "profile": stage_profile, "compare": stage_compare,
    "report": stage_report}
