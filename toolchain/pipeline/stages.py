"""The stages, in the order they run. Each ``stage_NAME(run, out)`` writes its files into ``out`` (a
scratch directory that becomes ``RUN_DIR/NAME/`` once the stage is complete) and returns its metrics;
it reads the earlier stages' files from their directories and their metrics from the manifest.

    baseline  export FP32, split the data, profile on the target
    prune     energy-aware pruning fed by the baseline cost table; the scheduler's pruning candidates
    search    the scheduler (:mod:`toolchain.pipeline.search`)
    distill   the chosen pruned student distilled from the unpruned teacher
    export    the distilled student to ONNX, checked against PyTorch
    quantize  the chosen INT8 configuration of the target's preset
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
    DATA,
    Run,
    chosen,
    datasets,
    deliverable,
    distill_student,
    onnx_metric,
    onnx_outputs,
    profile_options,
    quant_config,
    quantize_onnx,
    source_model,
    student_model,
)
from toolchain.pipeline.recipe import STAGES
from toolchain.pipeline.search import stage_search
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
    """Export the model to ONNX (FP32), split the data (eval.npz: a quarter, held out; train.npz), profile
    the FP32 model on the target (costs.json) and evaluate it."""
    from toolchain.data.dataset import DataOptions
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.data import load_dataset_for
    from toolchain.profile.run import profile_model

    r = run.recipe
    loaded = source_model(run)
    run.progress("baseline: exporting FP32")
    export_model(loaded, out / "model.onnx", ExportOptions())
    data = load_dataset_for(run.data, loaded, DataOptions(samples=r.samples, seq_len=r.seq_len, seed=r.seed))
    if data.synthetic:
        raise ToolchainError(f"{run.data}: random data cannot judge accuracy",
                             hint=f"give real data with {DATA}")
    held = max(4, len(data) // 4)
    _save_npz(out / "eval.npz", data.take(0, held))
    _save_npz(out / "train.npz", data.take(held, None))
    run.progress("baseline: profiling on the target")
    table = profile_model(out / "model.onnx", run.target, profile_options(run, r.profile_runs, out),
                          progress=run.progress)
    _save_costs(out / "costs.json", table)
    _, eval_data = datasets(run, out)
    reference = onnx_outputs(out / "model.onnx", eval_data)
    metric, name = onnx_metric(out / "model.onnx", eval_data, reference)
    return {"metric": metric, "metric_name": name, "eval_samples": held, "train_samples": len(data) - held,
            "data_subset_of": data.subset_of,
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
    train, held = datasets(run)
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
    save_pruned(replace(result, module=module0, final_metric=step0.accuracy if step0 else result.base_metric,
                        reduction=step0.predicted_reduction if step0 else 0.0,
                        params_after=step0.params if step0 else result.params_before,
                        steps=[x for x in result.steps if step0 and x.step <= step0.step]),
                loaded, run.model, out / "within-budget", config, meta, force=True)
    candidates = []
    (out / "candidates").mkdir()
    for n, (step, module) in enumerate(_spread(kept, r.search_points)):
        snapshot = replace(result, module=module, final_metric=step.accuracy, reduction=step.predicted_reduction,
                           params_after=step.params, steps=[x for x in result.steps if x.step <= step.step])
        save_pruned(snapshot, loaded, run.model, out / "candidates" / f"p{n}", config, meta, force=True)
        candidates.append({"dir": f"candidates/p{n}", "step": step.step, "metric": step.accuracy,
                           "predicted_energy_reduction": step.predicted_reduction, "params": step.params})
    return {"base_metric": result.base_metric, "metric": result.final_metric, "params_before": result.params_before,
            "params_after": result.params_after, "macs_before": result.macs_before, "macs_after": result.macs_after,
            "predicted_energy_reduction": result.reduction, "steps": len(result.steps),
            "kept_steps": sum(s.kept for s in result.steps), "candidates": candidates}


def stage_distill(run: Run, out: Path) -> dict[str, Any]:
    """The chosen pruned student distilled from the unpruned teacher at the chosen temperature."""
    c = chosen(run)
    return distill_student(run, str(run.dir("prune") / c["prune_dir"]), out, "distill", c["temperature"]) | {
        "student": c["prune_dir"], "temperature": c["temperature"]}


def stage_export(run: Run, out: Path) -> dict[str, Any]:
    """The distilled student to ONNX, checked against PyTorch."""
    from toolchain.export.exporter import ExportOptions, export_model

    loaded = student_model(run.dir("prune") / chosen(run)["prune_dir"], run.dir("distill") / "student.pt")
    result = export_model(loaded, out / "model.onnx", ExportOptions())
    return {"parity": [asdict(c) for c in result.parity], "nodes": result.nodes, "size_bytes": result.size_bytes}


def stage_quantize(run: Run, out: Path) -> dict[str, Any]:
    """The exported student, INT8 with the configuration the scheduler picked for it."""
    config = quant_config(run, run.metrics("search")["int8"])
    return quantize_onnx(run, run.dir("export") / "model.onnx", out / "model.int8.onnx", config)


def stage_profile(run: Run, out: Path) -> dict[str, Any]:
    """The deliverable's cost table on the target (costs.json)."""
    from toolchain.profile.run import profile_model

    artifact = deliverable(run)
    table = profile_model(artifact, run.target, profile_options(run, run.recipe.profile_runs), progress=run.progress)
    _save_costs(out / "costs.json", table)
    # a cost-table read by string key (to be converted to a formats.costs accessor)
    return {"artifact": str(artifact.relative_to(run.root)), "precision": table.model["precision"],
            "joules_per_inference": table.joules_per_inference, "meter": table.meter}


def stage_report(run: Run, out: Path) -> dict[str, Any]:
    """The sustainability report (report.md, report.html, report.json) of the compared variants and the
    scheduler's Pareto front."""
    from toolchain.report import build_report, write_report

    rows = json.loads((run.dir("compare") / "variants.json").read_text())
    search = run.metrics("search")
    best = search["chosen"]
    batch = run.recipe.batch
    inputs = run.manifest.inputs
    precision = "INT8" if best["quant"] else "FP32 (INT8 measured costlier on this target)"
    spec = {"title": f"{run.model} on {run.target.name}: pruned, distilled, {precision}",
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
                      f"every variant measured at batch {batch} on {run.target.name}: J/inference and latency "
                      f"per inference are per call / {batch}",
                      f"scheduler: {len(search['candidates'])} candidates (pruning point x distillation temperature x "
                      f"INT8 configuration) measured on {run.target.name}; chosen {best['label']} (objective "
                      f"{best['objective']:.3f} = {search['objective']}; weights {search['weights']}; grid "
                      f"{search['carbon_g_per_kwh']} gCO2e/kWh)",
                      # the whole recipe: every field is declared by an earlier stage, so this stage's key covers it
                      f"recipe: {json.dumps(run.manifest.recipe)}"]}
    report = build_report(spec)
    write_report(report, out, force=True)
    return {"headline": report.get("headline")}


STAGE_FUNCS: dict[str, Callable[[Run, Path], dict[str, Any]]] = {
    "baseline": stage_baseline, "prune": stage_prune, "search": stage_search, "distill": stage_distill,
    "export": stage_export, "quantize": stage_quantize, "profile": stage_profile, "compare": stage_compare,
    "report": stage_report}
