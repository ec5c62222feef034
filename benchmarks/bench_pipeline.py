"""The main job on a real model: `toolchain pipeline` on the BBC News topic classifier.

The teacher is all-MiniLM-L6-v2 fine-tuned here on BBC News' train split (catalogue model `minilm-bbc`,
cached with its hash); the pipeline prunes heads and MLP width energy-aware, distills from the teacher,
quantizes with the target's INT8 configurations, profiles and compares each technique alone (pruning
only, distillation only, INT8 only) with the deliverable, every figure on the 533 held-out test
articles (`builtin:bbcnews-test`), selection on the 318 calibration articles.

Then, on the same baseline cost table and budget: energy-aware against uniform magnitude pruning
(every layer cut by the same share, L2), both measured against the unpruned model with their windows
interleaved: predicted and measured energy reduction side by side.

Prints tables and writes benchmarks/results/pipeline.json (machine, runs, spreads).
Usage: python benchmarks/bench_pipeline.py [--recipe benchmarks/bbc.toml] [--runs 1] [--meter estimate]
       [--keep DIR] [--skip-pruning-comparison]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).parent
MODEL, DATA = "minilm-bbc", "builtin:bbcnews"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pipeline_run(run_dir: Path, args) -> dict:
    """One pipeline run; the report's figures for each variant."""
    from toolchain.formats.costs import MeasurementRecord
    from toolchain.pipeline import PipelineJob, Recipe, run_pipeline

    recipe = Recipe.load(args.recipe, {"meter": args.meter})
    started = time.perf_counter()
    manifest = run_pipeline(PipelineJob(MODEL, args.target, DATA, run_dir, recipe=recipe), progress=say)
    report = json.loads((run_dir / "report" / "report.json").read_text())
    rows = json.loads((run_dir / "compare" / "variants.json").read_text())
    variants = []
    for row in rows:
        m = MeasurementRecord.from_dict(row["measurement"])
        net = m.joules_per_inference.net
        variants.append({"name": row["name"], "metric": row["metric"], "params": row["params"],
                         "joules": net.mean, "joules_ci95": list(net.ci95) if net.ci95 else None,
                         "joules_cv_pct": net.cv_pct, "latency_ms": m.latency_ms.median_ms,
                         "windows": len(m.windows), "repeats": m.repeats})
    search = manifest.stages["search"].metrics
    return {"title": report["title"], "headline": report["headline"], "facts": report["headline_facts"],
            "chosen": search["chosen"]["label"], "why": search["why"], "meter": search["meter"],
            "evaluated_on": manifest.stages["compare"].metrics.get("evaluated_on"),
            "splits": manifest.stages["baseline"].metrics.get("splits"),
            "stage_seconds": {s: e.seconds for s, e in manifest.stages.items()},
            "seconds": time.perf_counter() - started, "variants": variants}


def pruning_comparison(run_dir: Path, args) -> dict:
    """Energy-aware against uniform magnitude pruning at the pipeline's budget, on its baseline."""
    from toolchain.data.load import load_dataset
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.formats.costs import CostTable, MeasurementRecord
    from toolchain.model.load import load_model
    from toolchain.pipeline import Recipe
    from toolchain.profile.run import ProfileOptions, compare_models
    from toolchain.prune import PruneConfig, costs_for, prune_model
    from toolchain.targets.target import load_target

    recipe = Recipe.load(args.recipe, {"meter": args.meter})
    target = load_target(args.target)
    base = run_dir / "baseline"
    loaded = load_model(MODEL)
    table = CostTable.load(base / "costs.json")
    costs = costs_for(table, loaded, loaded.module, target.name, "energy")
    train = load_dataset(str(base / "train.npz"), base / "model.onnx")
    calibration = load_dataset(str(base / "calib.npz"), base / "model.onnx")
    test = load_dataset(str(base / "eval.npz"), base / "model.onnx")
    work = run_dir / "bench-pruning"
    work.mkdir(exist_ok=True)
    paths, methods = {"baseline": base / "model.onnx"}, {}
    for method in ("energy", "uniform"):
        config = PruneConfig(importance="energy" if method == "energy" else "l2",
                             target_energy_reduction=recipe.target_energy_reduction,
                             max_accuracy_drop=recipe.max_accuracy_drop, step=recipe.prune_step,
                             finetune_epochs=recipe.finetune_epochs, max_steps=recipe.max_steps,
                             round_to=target.round_to, seed=recipe.seed)
        started = time.perf_counter()
        result = prune_model(loaded, config, train, calibration, costs=costs,  # l2: every layer alike
                             progress=lambda t, m=method: say(f"pruning {m}: {t}"))
        path = work / f"{method}.onnx"
        export_model(replace(loaded, module=result.module), path, ExportOptions(parity=False, force=True))
        paths[method] = path
        methods[method] = {"metric_before": result.base_metric, "metric_after": result.final_metric,
                           "metric_name": result.metric_name, "params_before": result.params_before,
                           "params_after": result.params_after, "macs_before": result.macs_before,
                           "macs_after": result.macs_after, "predicted_energy_reduction": result.reduction,
                           "widths": getattr(result, "widths", None), "steps": len(result.steps),
                           "seconds": time.perf_counter() - started}
    say("pruning comparison: measuring, windows interleaved")
    cmp = compare_models([str(p) for p in paths.values()], [target],
                         ProfileOptions(meter=recipe.meter, repeats=recipe.repeats, window_s=recipe.window_s,
                                        profile_runs=2, seq_len=recipe.seq_len, batch=recipe.batch,
                                        data=str(base / "eval.npz")))
    cols = {Path(c["model"]).stem: MeasurementRecord.from_dict(c) for c in cmp.to_dict()["columns"]}
    b = cols["model"]
    from toolchain.pipeline.context import onnx_metric, onnx_outputs

    reference = onnx_outputs(paths["baseline"], test)
    base_test, _ = onnx_metric(paths["baseline"], test, reference)
    for method, m in methods.items():
        c = cols[method]
        m["measured_energy_reduction"] = 1 - c.joules_per_inference.net.mean / b.joules_per_inference.net.mean
        m["measured_latency_reduction"] = 1 - c.latency_ms.median_ms / b.latency_ms.median_ms
        m["energy_cv_pct"] = c.joules_per_inference.net.cv_pct
        m["test_metric"], _ = onnx_metric(paths[method], test, reference)
        m["test_metric_before"] = base_test
    return {"meter": asdict(b.meter) if hasattr(b.meter, "__dataclass_fields__") else str(b.meter),
            "methods": methods}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default=str(HERE / "bbc.toml"))
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--meter", help="power meter (default: RAPL if readable here, else the labelled estimate)")
    parser.add_argument("--runs", type=int, default=1, help="pipeline runs (each from scratch; the teacher is cached)")
    parser.add_argument("--keep", help="keep the run directories under this folder")
    parser.add_argument("--skip-pruning-comparison", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from toolchain.core.host import cpu_info
    from toolchain.energy import rapl

    args.meter = args.meter or ("rapl" if rapl.probe().readable else "estimate")
    cpu = cpu_info()
    machine = {"cpu": cpu.model, "cores": cpu.cores, "flags": {k: v for k, v in cpu.features.items() if v}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        runs = [pipeline_run(root / f"run{i}", args) for i in range(args.runs)]
        pruning = None if args.skip_pruning_comparison else pruning_comparison(root / "run0", args)
    console = Console(width=160)
    for i, r in enumerate(runs):
        t = Table(title=f"run {i}: {r['title']}", title_justify="left")
        for col in ("variant", "accuracy % (test)", "params", "mJ/inference", "95% CI", "latency ms"):
            t.add_column(col, justify="left" if col == "variant" else "right")
        for v in r["variants"]:
            ci = v["joules_ci95"]
            t.add_row(v["name"], f"{v['metric']:.2f}", f"{v['params']:,}", f"{v['joules'] * 1e3:.3f}",
                      f"{ci[0] * 1e3:.3f}-{ci[1] * 1e3:.3f}" if ci else "n/a", f"{v['latency_ms']:.2f}")
        console.print(t)
        console.print(r["headline"])
    if pruning:
        t = Table(title="energy-aware vs uniform magnitude pruning, same budget and baseline cost table",
                  title_justify="left")
        for col in ("method", "metric (calib)", "test", "params", "MACs -", "predicted energy -", "measured energy -",
                    "measured latency -"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for name, m in pruning["methods"].items():
            t.add_row(name, f"{m['metric_before']:.2f} -> {m['metric_after']:.2f}",
                      f"{m['test_metric_before']:.2f} -> {m['test_metric']:.2f}",
                      f"{m['params_after']:,}/{m['params_before']:,}", f"{1 - m['macs_after'] / m['macs_before']:.1%}",
                      f"{m['predicted_energy_reduction']:.1%}", f"{m['measured_energy_reduction']:.1%}",
                      f"{m['measured_latency_reduction']:.1%}")
        console.print(t)
        e, u = pruning["methods"]["energy"], pruning["methods"]["uniform"]
        if u["measured_energy_reduction"] > 0:
            console.print(f"energy-aware / uniform measured energy cut: "
                          f"{e['measured_energy_reduction'] / u['measured_energy_reduction']:.2f}x")
    out = HERE / "results" / "pipeline.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": machine, "runs": runs, "pruning": pruning}, indent=2,
                              default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
