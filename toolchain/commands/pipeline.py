"""toolchain pipeline"""

from __future__ import annotations

import click

from toolchain.commands.common import FiniteFloatRange, emit, is_quiet, json_option, json_safe_stdout, status
from toolchain.pipeline import STAGES, Recipe

_DEFAULT = Recipe()  # the help quotes the recipe's defaults


@click.command()
@click.option("--model", default="fashion-cnn", show_default=True,
              help="PyTorch model: a catalogue name, a transformers directory or module:factory.")
@click.option("--target", "target_spec", default="x86-cpu", show_default=True, metavar="TARGET",
              help="Deployment target (`toolchain targets`): its provider, meter, carbon intensity, INT8 preset.")
@click.option("--data", default="builtin:fashion-mnist", show_default=True,
              help="Real training data (fine-tuning, distillation). Without --eval-data a built-in set's own "
                   "held-out split is used (builtin:bbcnews, builtin:fashion-mnist, builtin:photos), else 25% is "
                   "held out and 15% split off for calibration, stratified by label.")
@click.option("--eval-data", help="Held-out data: only ever evaluated; every accuracy in the report comes from it.")
@click.option("--calib-data", help="Calibration data: INT8 calibration and every selection (pruning steps, the "
                                   "scheduler's choice); never reported as accuracy.")
@click.option("--recipe", "recipe_path", type=click.Path(exists=True, dir_okay=False),
              help="TOML recipe (keys of toolchain.pipeline.Recipe); options below override it.")
@click.option("--max-accuracy-drop", type=FiniteFloatRange(0, min_open=True),
              help=f"Accuracy budget of the whole pipeline, in points (recipe default {_DEFAULT.max_accuracy_drop}).")
@click.option("--target-energy-reduction", type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
              help=f"What energy-aware pruning aims for (recipe default {_DEFAULT.target_energy_reduction}); the budget "
                   "may stop it sooner.")
@click.option("--meter", help="Power meter instead of the target's (e.g. `estimate`, labelled as such).")
@click.option("--samples", type=click.IntRange(8), help=f"Samples read from --data (recipe default {_DEFAULT.samples}).")
@click.option("--from", "from_stage", type=click.Choice(STAGES), help="Re-run from this stage on (earlier ones reused).")
@click.option("--until", type=click.Choice(STAGES), help="Stop after this stage.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), metavar="RUN_DIR",
              help="Run directory: new, empty or an earlier run's (one folder per stage, "
                   "manifest.json, report/); any other directory is refused untouched.")
@json_option
@click.pass_context
def pipeline(ctx, model, target_spec, data, eval_data, calib_data, recipe_path, max_accuracy_drop, target_energy_reduction, meter, samples,
             from_stage, until, output, as_json):
    """One run from a PyTorch model to a deployable ONNX artifact (INT8 where it pays off on the
    target), its cost tables and its sustainability report.

    \b
    Stages: baseline (export FP32, split the data, profile on the target) -> prune
    (energy-aware, fed by the baseline cost table) -> search (the scheduler: the
    input model in FP32 and INT8, and pruning points x distillation temperatures x
    INT8 configurations and FP32, each distilled, quantized, evaluated on the
    calibration part and measured; the best by a weighted accuracy / energy /
    carbon objective within --max-accuracy-drop that uses less energy than the
    input, or the input itself: the pipeline never delivers a model worse than its
    input) -> distill, export, quantize (the winner's files, promoted) -> profile
    -> compare (baseline, pruning only, INT8 only, distillation only, the
    deliverable; measured together, evaluated on the held-out part) -> report
    (RUN_DIR/report/report.md, .html, .json; its title says what was delivered).

    Re-running skips the finished stages whose inputs did not change (RUN_DIR/manifest.json
    keeps their keys and output hashes); an interrupted stage leaves nothing half-written
    and runs again.

    \b
    Examples:
      toolchain pipeline -o runs/fashion --meter estimate     # the CNN of `make demo`
      toolchain pipeline --model minilm-bbc --data builtin:bbcnews --recipe bbc.toml -o runs/bbc
      toolchain pipeline --model ./my-model --data train.csv --eval-data test.csv -o runs/mine
      toolchain pipeline --model minilm --data builtin:drugreviews --max-accuracy-drop 2 \
          --recipe minilm.toml -o runs/minilm     # the default recipe is sized for small CNNs
      toolchain pipeline -o runs/fashion --from quantize        # redo quantize and after
    """
    from toolchain.pipeline import PipelineJob, run_pipeline

    overrides = {"max_accuracy_drop": max_accuracy_drop, "target_energy_reduction": target_energy_reduction,
                 "meter": meter, "samples": samples}
    with json_safe_stdout(as_json), status("pipeline", quiet=is_quiet(ctx, as_json)) as progress:
        job = PipelineJob(model=model, target=target_spec, data=data, eval_data=eval_data, calib_data=calib_data,
                          output=output,
                          recipe=Recipe.load(recipe_path, overrides), from_stage=from_stage, until=until)
        manifest = run_pipeline(job, progress=progress)

    def metrics(stage: str) -> dict:
        entry = manifest.stages.get(stage)
        return (entry.metrics if entry else None) or {}

    def render(console) -> None:
        from rich.table import Table

        t = Table(title=f"pipeline {model} -> {target_spec} ({output})")
        for col in ("stage", "status", "seconds", "result"):
            t.add_column(col, justify="right" if col == "seconds" else "left")
        for stage in STAGES:
            s = manifest.stages.get(stage)
            if not s:
                continue
            state = "reused" if s.reused else s.status
            t.add_row(stage, state, f"{s.seconds or 0:.1f}", _summary(stage, s.metrics or {}))
        console.print(t)
        search = metrics("search")
        front = [c for c in search.get("candidates", []) if c.get("front_energy") or c.get("front_latency")]
        if front:
            kind = (search.get("meter") or {}).get("kind", "")
            f = Table(title=f"scheduler: Pareto front of {len(search['candidates'])} candidates (budget "
                            f"{manifest.recipe['max_accuracy_drop']} points; grid {search.get('carbon_g_per_kwh')} "
                            "gCO2e/kWh)")
            for col in ("candidate", "metric", f"mJ/inference ({kind})", "latency ms", "front", "objective"):
                f.add_column(col, justify="left" if col in ("candidate", "front") else "right")
            chosen = (search.get("chosen") or {}).get("label")
            for c in sorted(front, key=lambda c: c["joules"]):
                where = "+".join(n for n, k in (("energy", "front_energy"), ("latency", "front_latency")) if c.get(k))
                f.add_row(("[bold]* " if c["label"] == chosen else "") + c["label"], f"{c['metric']:.2f}",
                          f"{c['joules'] * 1e3:.4f}", f"{c['latency_ms']:.4f}", where, f"{c['objective']:.3f}")
            console.print(f)
        report = metrics("report")
        if report.get("title"):
            console.print(f"[bold]{report['title']}[/bold]")
        if search.get("why"):
            console.print(f"  chosen: {search['why']}")
        if report.get("headline"):
            console.print(report["headline"])
        profile = metrics("profile")
        if profile.get("artifact"):
            console.print(f"  deliverable ({profile['precision']}): {output}/{profile['artifact']}")
        for name in ("quantize/model.int8.onnx", "profile/costs.json", "report/report.md", "report/report.html"):
            entry = manifest.stages.get(name.split("/")[0])
            if entry and name in (entry.outputs or {}):
                console.print(f"  {output}/{name}")

    emit(manifest.to_dict(), as_json, render)


def _summary(stage: str, m: dict) -> str:
    if m.get("skipped"):
        return f"skipped: {m['skipped']}"
    if stage == "baseline":
        return f"{m.get('metric_name')} {m.get('metric', 0):.2f}; {m.get('joules_per_inference', 0) * 1e3:.4f} mJ/inference"
    if stage == "prune":
        return (f"{m.get('metric', 0):.2f} (from {m.get('base_metric', 0):.2f}); params {m.get('params_after', 0):,}/"
                f"{m.get('params_before', 0):,}; predicted energy -{m.get('predicted_energy_reduction', 0):.1%}")
    if stage == "distill":
        return f"best epoch {m.get('best_epoch')}: {m.get('best')}"
    if stage == "quantize":
        return f"{m.get('config')} ({m.get('preset')})"
    if stage == "profile":
        return (f"{m.get('artifact')} ({m.get('precision')}): {m.get('joules_per_inference', 0) * 1e3:.4f} mJ/inference "
                f"({(m.get('meter') or {}).get('kind')})")
    if stage == "search":
        c = m.get("chosen") or {}
        return (f"{len(m.get('candidates', []))} candidates; chosen {c.get('label')}: {c.get('metric', 0):.2f}, "
                f"{c.get('joules', 0) * 1e3:.4f} mJ/inference")
    if stage == "compare":
        return "; ".join(f"{v['name']} {v['metric']:.2f} {v['joules_per_inference'] * 1e3:.4f} mJ"
                         for v in m.get("variants", []))
    return ""
