"""``toolchain pipeline``: one run from a PyTorch model to a pruned, distilled, INT8 ONNX artifact with its
cost tables and sustainability report, each stage the library call of its own command.

Stages, in order (each writes ``RUN_DIR/<stage>/``)::

    baseline  export FP32, split the data (train.npz / eval.npz), profile on the target (cost table)
    prune     energy-aware pruning fed by the baseline cost table (toolchain.prune); the models after its
              kept steps are the scheduler's pruning candidates (``search_points`` of them, spread out)
    search    the sustainability-aware scheduler (SuComp): every candidate pruning ratio x distillation
              temperature x INT8 configuration is distilled, quantized, evaluated and measured on the
              target (windows interleaved); the best by a weighted objective of accuracy, energy and carbon
              within the accuracy budget is chosen; the Pareto front is kept for the report
    distill   the chosen pruned student distilled from the unpruned teacher (toolchain.distill)
    export    the distilled student to ONNX, checked against PyTorch (toolchain.export)
    quantize  ONNX Runtime INT8 static quantization: the chosen configuration of the target's preset
    profile   the INT8 artifact's cost table on the target
    compare   baseline, pruning only, INT8 only, distillation only and the full pipeline, measured
              together (windows interleaved) and evaluated on the held-out data
    report    Markdown, HTML and JSON (toolchain.report)

``RUN_DIR/manifest.json`` records the inputs (model source hash, data, target), the recipe, tool versions
and, per stage: its key (a hash of its configuration and of the earlier stages' keys and output files), outputs
with their sha256, metrics and seconds. A re-run skips a stage whose key is unchanged and whose outputs
are intact; a stage is written into a temporary directory and renamed into place when complete, so an
interrupted stage leaves nothing half-written and is simply run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import remove_stale, sha256_file, write_json
from toolchain.model.load import load_model

STAGES = ("baseline", "prune", "search", "distill", "export", "quantize", "profile", "compare", "report")
MANIFEST = "manifest.json"
FORMAT = "toolchain.pipeline-run"
FORMAT_VERSION = 1


@dataclass
class Recipe:
    """What a run does. ``toolchain pipeline --recipe recipe.toml`` sets any of these fields; a TOML
    table (``[prune]``, ``[distill]`` ...) is a grouping for the reader only: keys are these names."""

    samples: int = 4000  # taken from the data; a quarter is held out for evaluation
    seq_len: int = 128
    # prune
    importance: str = "energy"
    target_energy_reduction: float = 0.8
    max_accuracy_drop: float = 1.0  # points, for the artifact the pipeline delivers (checked by the scheduler)
    # pruning may go this many times max_accuracy_drop below the baseline: distillation wins accuracy back,
    # so the trajectory's later points are candidates too; the scheduler keeps only those within the budget
    prune_budget: float = 2.0
    prune_step: float = 0.1
    finetune_epochs: int = 1
    max_steps: int = 20
    # distill
    distill_epochs: int = 2
    alpha: float = 0.7
    distill_lr: float = 1e-4
    distill_only_width: float = 0.7  # the "distillation only" student: every layer at this share of its width
    # (0.7: about half the parameters, the half-size student SuComp compares with)
    # quantize
    calib_samples: int = 256
    # search (the scheduler): candidates = pruning points x temperatures x INT8 configurations
    search_points: int = 3  # pruning ratios taken from the pruning trajectory (the last kept step included)
    search_temperatures: tuple[float, ...] = (2.0, 4.0)
    search_quant: int = 2  # the target preset's first static INT8 configurations
    # FP32 is a candidate too: where INT8 costs more energy on the target (measured), the scheduler keeps
    # FP32 for the deliverable (the INT8 artifact of the chosen student is still written and compared)
    search_fp32: bool = True
    search_budget: int = 12  # most candidates evaluated (0: no search, the defaults above)
    w_accuracy: float = 1.0  # objective weights (see choose())
    w_energy: float = 1.0
    w_carbon: float = 1.0
    reference_carbon_g_per_kwh: float = 436.0  # the grid at which the carbon term weighs w_carbon (world 2022)
    # measure
    meter: str | None = None  # None: the target's
    # inferences per call when measuring; J/inference = J per call / batch. 32 measures the model's work
    # rather than ONNX Runtime's per-call overhead, which dominates a sub-millisecond model at batch 1
    batch: int = 32
    repeats: int = 5
    window_s: float = 1.0
    idle_s: float | None = None
    profile_runs: int = 20
    seed: int = 0

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
        data: dict[str, Any] = {}
        if path:
            try:
                raw = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ToolchainError(f"{path}: not a readable recipe ({str(exc).splitlines()[0]})") from None
            for key, value in raw.items():
                data.update(value if isinstance(value, dict) else {key: value})
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ToolchainError(f"recipe: unknown key {unknown[0]!r}", hint=f"keys: {', '.join(known)}")
        if isinstance(data.get("search_temperatures"), list):
            data["search_temperatures"] = tuple(data["search_temperatures"])
        recipe = cls(**data)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name in ("target_energy_reduction", "prune_step", "distill_only_width"):
            if not 0 < getattr(self, name) < 1:
                raise ToolchainError(f"recipe: {name} {getattr(self, name)} is out of range (0, 1)")
        if not 0 < self.prune_budget <= 5:
            raise ToolchainError(f"recipe: prune_budget {self.prune_budget} is out of range (0, 5]")
        if self.max_accuracy_drop <= 0 or self.samples < 8 or self.repeats < 2 or self.batch < 1:
            raise ToolchainError("recipe: max_accuracy_drop must be > 0, samples >= 8, repeats >= 2 and batch >= 1")
        if self.search_points < 1 or self.search_quant < 1 or not self.search_temperatures or self.search_budget < 0:
            raise ToolchainError("recipe: search_points and search_quant must be >= 1, search_temperatures non-empty, "
                                 "search_budget >= 0")
        if min(self.search_temperatures) <= 0 or min(self.w_accuracy, self.w_energy, self.w_carbon) < 0:
            raise ToolchainError("recipe: temperatures must be > 0 and weights >= 0")


@dataclass
class Run:
    """Everything a stage needs: where, what, and the manifest so far."""

    model: str
    target: Any
    data: str
    recipe: Recipe
    root: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda _text: None

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def stage(self, name: str) -> dict[str, Any]:
        return self.manifest["stages"][name]


# ---------------------------------------------------------------------------------------------- helpers


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _loaded(run: Run):
    from toolchain.model.load import load_model

    return load_model(run.model)


def _datasets(run: Run, base: Path | None = None):
    """The baseline stage's split: (train, eval)."""
    from toolchain.data.load import load_dataset

    base = base or run.dir("baseline")
    return tuple(load_dataset(str(base / f"{part}.npz"), base / "model.onnx") for part in ("train", "eval"))


def _profile_options(run: Run, base: Path | None = None):
    from toolchain.profile.run import ProfileOptions

    r = run.recipe
    return ProfileOptions(meter=r.meter, repeats=r.repeats, window_s=r.window_s, idle_s=r.idle_s,
                          profile_runs=r.profile_runs, seq_len=r.seq_len, batch=r.batch,
                          data=str((base or run.dir("baseline")) / "eval.npz"))


def onnx_outputs(path: Path, data) -> Any:
    """First output of an ONNX model over ``data`` (token embeddings mean-pooled, as MiniLM is used)."""
    from toolchain.runtime.outputs import pooled, run_outputs
    from toolchain.runtime.session import create_session

    return pooled(run_outputs(create_session(path), data), data)


def onnx_metric(path: Path, data, reference) -> tuple[float, str]:
    """Accuracy % where the data has labels and the model gives logits, else cosine x 100 against the
    baseline's outputs ``reference``."""
    from toolchain.runtime.outputs import fidelity, is_classifier

    out = onnx_outputs(path, data)
    classifier = data.labels is not None and is_classifier(path) and out.shape[1] > int(data.labels.max())
    fid = fidelity(reference, out, data.labels if classifier else None, classifier)
    if fid.accuracy_int8 is not None:
        return 100 * fid.accuracy_int8, "accuracy %"
    return 100 * fid.cosine, "cosine x 100"


def _save_npz(path: Path, ds) -> None:
    import numpy as np

    arrays = dict(ds.feeds)
    if ds.labels is not None:
        arrays["labels"] = ds.labels
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# ---------------------------------------------------------------------------------------------- stages


def stage_baseline(run: Run, out: Path) -> dict[str, Any]:
    from toolchain.data.dataset import DataOptions
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.data import load_dataset_for
    from toolchain.profile.run import profile_model

    loaded = _loaded(run)
    run.progress("baseline: exporting FP32")
    export_model(loaded, out / "model.onnx", ExportOptions())
    data = load_dataset_for(run.data, loaded, DataOptions(samples=run.recipe.samples, seq_len=run.recipe.seq_len,
                                                          seed=run.recipe.seed))
    if data.synthetic:
        raise ToolchainError(f"{run.data}: random data cannot judge accuracy", hint="give real data with --data")
    held = max(4, len(data) // 4)
    _save_npz(out / "eval.npz", data.take(0, held))
    _save_npz(out / "train.npz", data.take(held, None))
    run.progress("baseline: profiling on the target")
    table = profile_model(out / "model.onnx", run.target, _profile_options(run, out), progress=run.progress)
    (out / "costs.json").write_text(table.to_json())
    _, eval_data = _datasets(run, out)
    reference = onnx_outputs(out / "model.onnx", eval_data)
    metric, name = onnx_metric(out / "model.onnx", eval_data, reference)
    return {"metric": metric, "metric_name": name, "eval_samples": held, "train_samples": len(data) - held,
            "joules_per_inference": table.joules_per_inference, "meter": table.meter}


def stage_prune(run: Run, out: Path) -> dict[str, Any]:
    import copy

    from toolchain.formats.costs import CostTable
    from toolchain.prune import PruneConfig, costs_for, prune_model, save_pruned

    r = run.recipe
    loaded = _loaded(run)
    table = CostTable.load(run.dir("baseline") / "costs.json")
    costs = costs_for(table, loaded, loaded.module, run.target.name, "energy")
    train, held = _datasets(run)
    config = PruneConfig(importance=r.importance, target_energy_reduction=r.target_energy_reduction,
                         max_accuracy_drop=r.max_accuracy_drop * r.prune_budget, step=r.prune_step,
                         finetune_epochs=r.finetune_epochs, max_steps=r.max_steps, round_to=run.target.round_to,
                         seed=r.seed)
    kept: list[tuple[Any, Any]] = []  # (step record, model copy) after every kept step
    result = prune_model(loaded, config, train, held, costs=costs, progress=lambda t: run.progress(f"prune: {t}"),
                         on_kept=lambda step, module: kept.append((step, copy.deepcopy(module))))
    save_pruned(result, loaded, run.model, out, config, {"target": run.target.name}, force=True)
    # pruning alone at the pipeline's budget (the "pruning only" variant): its most pruned step within it
    within = [(step, module) for step, module in kept if result.base_metric - step.accuracy <= r.max_accuracy_drop]
    step0, module0 = within[-1] if within else (None, copy.deepcopy(loaded.module))
    save_pruned(replace(result, module=module0, final_metric=step0.accuracy if step0 else result.base_metric,
                        reduction=step0.predicted_reduction if step0 else 0.0,
                        params_after=step0.params if step0 else result.params_before,
                        steps=[x for x in result.steps if step0 and x.step <= step0.step]),
                loaded, run.model, out / "within-budget", config, {"target": run.target.name}, force=True)
    candidates = []
    (out / "candidates").mkdir()
    for n, (step, module) in enumerate(_spread(kept, r.search_points)):
        snapshot = replace(result, module=module, final_metric=step.accuracy, reduction=step.predicted_reduction,
                           params_after=step.params, steps=[x for x in result.steps if x.step <= step.step])
        save_pruned(snapshot, loaded, run.model, out / "candidates" / f"p{n}", config, {"target": run.target.name},
                    force=True)
        candidates.append({"dir": f"candidates/p{n}", "step": step.step, "metric": step.accuracy,
                           "predicted_energy_reduction": step.predicted_reduction, "params": step.params})
    return {"base_metric": result.base_metric, "metric": result.final_metric, "params_before": result.params_before,
            "params_after": result.params_after, "macs_before": result.macs_before, "macs_after": result.macs_after,
            "predicted_energy_reduction": result.reduction, "steps": len(result.steps),
            "kept_steps": sum(s.kept for s in result.steps), "candidates": candidates}


def _spread(items: list, n: int) -> list:
    """Up to ``n`` of ``items`` evenly spread, the last always included."""
    if len(items) <= n:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)} if n > 1 else {len(items) - 1})
    return [items[i] for i in picks]


def _distill(run: Run, student: str, out: Path, label: str, temperature: float) -> dict[str, Any]:
    from toolchain.distill import DistillConfig, run_distill

    r = run.recipe
    config = DistillConfig(teacher=run.model, student=student, data=str(run.dir("baseline") / "train.npz"),
                           epochs=r.distill_epochs, lr=r.distill_lr, temperature=temperature, alpha=r.alpha,
                           seq_len=r.seq_len, seed=r.seed)
    report = run_distill(config, out, force=True, progress=lambda t: run.progress(f"{label}: {t}"))
    (out / "checkpoint.pt").unlink(missing_ok=True)  # finished: the resumable state is not an artifact
    return {"best_epoch": report["best_epoch"], "best": report["best"], "initial": report["initial_metrics"],
            "metric": report["metric"]}


def _chosen(run: Run) -> dict[str, Any]:
    return run.stage("search")["metrics"]["chosen"]


def stage_distill(run: Run, out: Path) -> dict[str, Any]:
    chosen = _chosen(run)
    return _distill(run, str(run.dir("prune") / chosen["prune_dir"]), out, "distill", chosen["temperature"]) | {
        "student": chosen["prune_dir"], "temperature": chosen["temperature"]}


OBJECTIVE = ("w_accuracy * (metric - metric_base) / max_accuracy_drop - w_energy * J / J_base "
             "- w_carbon * (intensity / reference_intensity) * gCO2e / gCO2e_base")


def objective(c: dict[str, Any], base: dict[str, Any], recipe: Recipe, intensity: float) -> float:
    """The scheduler's weighted objective (higher is better)::

        w_accuracy * (metric - metric_base) / max_accuracy_drop
        - w_energy * J / J_base
        - w_carbon * (intensity / reference_intensity) * gCO2e / gCO2e_base

    Accuracy is counted in units of the budget; energy and carbon relative to the baseline. The carbon term
    weighs more on a dirtier grid (the target's intensity against ``reference_carbon_g_per_kwh``), so the
    scheduler compresses harder there; candidates over the budget are never chosen (see :func:`choose`)."""
    carbon = intensity / recipe.reference_carbon_g_per_kwh
    return (recipe.w_accuracy * (c["metric"] - base["metric"]) / recipe.max_accuracy_drop
            - recipe.w_energy * c["joules"] / base["joules"]
            - recipe.w_carbon * carbon * c["joules"] / base["joules"])


def choose(candidates: list[dict[str, Any]], base: dict[str, Any], recipe: Recipe, intensity: float) -> int | None:
    """Index of the candidate with the best :func:`objective` among those within the accuracy budget."""
    scored = [(objective(c, base, recipe, intensity), i) for i, c in enumerate(candidates)
              if base["metric"] - c["metric"] <= recipe.max_accuracy_drop + 1e-9]
    return max(scored)[1] if scored else None


def stage_search(run: Run, out: Path) -> dict[str, Any]:
    """The sustainability-aware scheduler: distill, quantize, evaluate and measure every candidate."""
    import itertools

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.profile.run import compare_models
    from toolchain.quantize import model_type
    from toolchain.targets.presets import preset

    r = run.recipe
    prune = run.stage("prune")["metrics"]
    points = prune["candidates"] or [{"dir": ".", "step": 0, "metric": prune["metric"],
                                      "predicted_energy_reduction": 0.0, "params": prune["params_after"]}]
    p = preset(run.target.quant_preset)
    base_path = run.dir("baseline") / "model.onnx"
    # as `toolchain quantize` does: static configurations for CNNs; transformers start from the preset's
    # transformer configuration (dynamic on CPUs), static quantization of their activations wrecks them
    first = p.transformer if model_type(base_path) is not None else p.static
    configs = [c for c in (first, *p.candidates) if c.mode == "static" or model_type(base_path) is not None]
    quants: list[Any] = list({c.label: c for c in configs}.values())[:r.search_quant]
    if r.search_fp32:
        quants.append(None)
    grid = list(itertools.product(range(len(points)), r.search_temperatures, range(len(quants))))
    if r.search_budget == 0:  # no search: the most pruned point, the first temperature and configuration
        grid = [(len(points) - 1, r.search_temperatures[0], 0)]
    elif len(grid) > r.search_budget:  # spread the budget over the grid, the most pruned point first
        grid = sorted(grid, key=lambda g: (-g[0], g[1], g[2]))[:r.search_budget]
    _, held = _datasets(run)
    reference = onnx_outputs(base_path, held)
    candidates: list[dict[str, Any]] = []
    students: dict[tuple[int, float], Path] = {}
    for n, (pi, temperature, qi) in enumerate(grid, 1):
        point = points[pi]
        prune_dir = run.dir("prune") / point["dir"]
        if (pi, temperature) not in students:
            work = out / f"p{pi}-T{temperature:g}"
            _distill(run, str(prune_dir), work, f"search {n}/{len(grid)}: distill T={temperature:g}", temperature)
            export_model(_student(run, prune_dir, work / "student.pt"), work / "model.onnx", ExportOptions(parity=False))
            students[(pi, temperature)] = work
        work = students[(pi, temperature)]
        if quants[qi] is None:
            model, label = work / "model.onnx", "FP32"
        else:
            model, label = work / f"model.q{qi}.onnx", quants[qi].label
            run.progress(f"search {n}/{len(grid)}: quantize {label}")
            _quantize(run, work / "model.onnx", model, quants[qi])
        metric, _ = onnx_metric(model, held, reference)
        candidates.append({"label": f"p{pi} T={temperature:g} {label}", "onnx": str(model.relative_to(out)),
                           "prune_dir": point["dir"], "prune_step": point["step"],
                           "predicted_energy_reduction": point["predicted_energy_reduction"], "temperature": temperature,
                           "quant": None if quants[qi] is None else label, "metric": metric})
    run.progress(f"search: measuring {len(candidates)} candidates and the baseline, windows interleaved")
    paths = [str(base_path), *[str(out / c["onnx"]) for c in candidates]]
    comparison = compare_models(paths, [run.target], replace(_profile_options(run), profile_runs=2),
                                progress=run.progress)
    tables = [comparison.tables[(path, run.target.name)] for path in paths]
    base_metric = run.stage("baseline")["metrics"]["metric"]
    base = {"metric": base_metric, "joules": tables[0].joules_per_inference,
            "latency_ms": tables[0].measurement["latency_ms"]["median_ms"]}
    for c, t in zip(candidates, tables[1:], strict=True):
        c["joules"] = t.joules_per_inference
        c["latency_ms"] = t.measurement["latency_ms"]["median_ms"]
        c["joules_cv_pct"] = t.measurement["joules_per_inference"]["net"]["cv_pct"]
        c["objective"] = objective(c, base, r, run.target.carbon_g_per_kwh)
    chosen = choose(candidates, base, r, run.target.carbon_g_per_kwh)
    # the INT8 configuration for the chosen student's INT8 artifact: the chosen one, else the best measured
    int8_of_chosen = [c for c in candidates if c["quant"] and chosen is not None
                      and (c["prune_dir"], c["temperature"]) == (candidates[chosen]["prune_dir"],
                                                                 candidates[chosen]["temperature"])]
    if chosen is None:
        raise ToolchainError(f"no candidate stays within the accuracy budget of {r.max_accuracy_drop} points "
                             f"(best {max(c['metric'] for c in candidates):.2f} against {base_metric:.2f})",
                             hint="raise max_accuracy_drop, or lower prune_budget so INT8 and distillation keep more")
    from toolchain.report.build import pareto_front

    for key, flag in (("joules", "front_energy"), ("latency_ms", "front_latency")):
        front = pareto_front(candidates, key)
        for i, c in enumerate(candidates):
            c[flag] = i in front
    for work in students.values():  # the search's students are scratch: the distill stage redoes the chosen one
        (work / "student.pt").unlink(missing_ok=True)
    return {"baseline": base, "meter": tables[0].meter, "carbon_g_per_kwh": run.target.carbon_g_per_kwh,
            "objective": OBJECTIVE,
            "weights": {"accuracy": r.w_accuracy, "energy": r.w_energy, "carbon": r.w_carbon,
                        "reference_carbon_g_per_kwh": r.reference_carbon_g_per_kwh},
            "candidates": candidates, "chosen": candidates[chosen],
            "int8": candidates[chosen]["quant"] or (min(int8_of_chosen, key=lambda c: c["joules"])["quant"]
                                                     if int8_of_chosen else quants[0].label)}


def _student(run: Run, student_dir: Path, weights: Path):
    import torch

    from toolchain.model.load import load_model

    loaded = load_model(str(student_dir))
    loaded.module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    loaded.module.eval()
    return loaded


def stage_export(run: Run, out: Path) -> dict[str, Any]:
    from toolchain.export.exporter import ExportOptions, export_model

    loaded = _student(run, run.dir("prune") / _chosen(run)["prune_dir"], run.dir("distill") / "student.pt")
    result = export_model(loaded, out / "model.onnx", ExportOptions())
    return {"parity": [asdict(c) for c in result.parity], "nodes": result.nodes, "size_bytes": result.size_bytes}


def _quant_config(run: Run, label: str):
    """The target preset's INT8 configuration named ``label``."""
    from toolchain.targets.presets import preset

    p = preset(run.target.quant_preset)
    config = next((c for c in (p.static, p.transformer, *p.candidates) if c.label == label), None)
    if config is None:
        raise ToolchainError(f"the chosen INT8 configuration {label!r} is not in preset {p.name}", hint="--from search")
    return config


def _quantize(run: Run, src: Path, dest: Path, config) -> dict[str, Any]:
    from toolchain.quantize import quantize_model

    train, _ = _datasets(run)
    result = quantize_model(src, dest, config, calibration=train.take(0, run.recipe.calib_samples), force=True,
                            preset_name=run.target.quant_preset)
    return {"config": config.label, "preset": run.target.quant_preset, "size_fp32_bytes": result.size_fp32_bytes,
            "size_int8_bytes": result.size_int8_bytes}


def stage_quantize(run: Run, out: Path) -> dict[str, Any]:
    label = run.stage("search")["metrics"]["int8"]
    return _quantize(run, run.dir("export") / "model.onnx", out / "model.int8.onnx", _quant_config(run, label))


def deliverable(run: Run) -> Path:
    """The artifact the run delivers: the INT8 model, or the FP32 one where the scheduler measured INT8
    to cost more on the target."""
    return run.dir("quantize") / "model.int8.onnx" if _chosen(run)["quant"] else run.dir("export") / "model.onnx"


def stage_profile(run: Run, out: Path) -> dict[str, Any]:
    from toolchain.profile.run import profile_model

    artifact = deliverable(run)
    table = profile_model(artifact, run.target, _profile_options(run), progress=run.progress)
    (out / "costs.json").write_text(table.to_json())
    return {"artifact": str(artifact.relative_to(run.root)), "precision": table.model["precision"],
            "joules_per_inference": table.joules_per_inference, "meter": table.meter}


def stage_compare(run: Run, out: Path) -> dict[str, Any]:
    """The single techniques beside the full pipeline, measured together on the target."""
    import copy

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.profile.run import compare_models
    from toolchain.prune import (
        PruneConfig,
        PruneResult,
        apply_pruning,
        attention_blocks,
        example_args,
        output_layer,
        prune_transformer_units,
        save_pruned,
        transformer_units,
    )

    r = run.recipe
    loaded = _loaded(run)
    _, held = _datasets(run)
    base = run.dir("baseline") / "model.onnx"
    run.progress("compare: pruning only (the most pruned step within the budget, fine-tuned, FP32)")
    export_model(load_model(str(run.dir("prune") / "within-budget")), out / "pruning-only.onnx", ExportOptions(parity=False))
    run.progress("compare: INT8 only")
    int8_label = run.stage("search")["metrics"]["int8"]
    _quantize(run, base, out / "int8-only.onnx", _quant_config(run, int8_label))
    # distillation only: every layer (the head aside) at distill_only_width of its width, distilled
    run.progress("compare: distillation only (a uniformly narrower student, distilled)")
    narrow = copy.deepcopy(loaded.module)
    head = output_layer(narrow)
    config = PruneConfig(importance="l2", ratio=1 - r.distill_only_width, round_to=run.target.round_to)
    example = example_args(loaded, held)
    if attention_blocks(narrow):  # heads and MLP width of every layer
        prune_transformer_units(loaded, narrow, example, transformer_units(narrow), replace(config, step=config.ratio))
    else:
        apply_pruning(loaded, narrow, example, float(config.ratio), [dict(narrow.named_modules())[head]] if head else [],
               config, None)
    student_dir = out / "distill-only-student"
    save_pruned(PruneResult(narrow, 0.0, 0.0, "", 0, 0, 0, 0, 0.0, "uniform width"), loaded, run.model, student_dir,
                config, {}, force=True)
    _distill(run, str(student_dir), out / "distill-only", "compare: distillation only", _chosen(run)["temperature"])
    export_model(_student(run, student_dir, out / "distill-only" / "student.pt"), out / "distill-only.onnx",
                 ExportOptions(parity=False))
    variants = {"baseline (FP32)": base, "pruning only": out / "pruning-only.onnx", "INT8 only": out / "int8-only.onnx",
                "distillation only": out / "distill-only.onnx"}
    if _chosen(run)["quant"] is None:  # the scheduler kept FP32: its INT8 counterpart is shown beside it
        variants["prune + distill + INT8"] = run.dir("quantize") / "model.int8.onnx"
    variants[f"full pipeline ({'INT8' if _chosen(run)['quant'] else 'FP32, INT8 measured costlier'})"] = deliverable(run)
    run.progress(f"compare: measuring all {len(variants)} on the target, windows interleaved")
    comparison = compare_models([str(p) for p in variants.values()], [run.target], _profile_options(run),
                                progress=run.progress)
    reference = onnx_outputs(base, held)
    rows = []
    for (name, path) in variants.items():
        table = comparison.tables[(str(path), run.target.name)]
        metric, metric_name = onnx_metric(path, held, reference)
        params = _onnx_params(path)
        rows.append({"name": name, "onnx": str(path), "metric": metric, "metric_name": metric_name, "params": params,
                     "size_bytes": path.stat().st_size, "measurement": table.measurement,
                     "cost_table": json.loads(table.to_json())})
    write_json(out / "variants.json", rows)
    return {"variants": [{k: v for k, v in r.items() if k not in ("measurement", "cost_table")}
                         | {"joules_per_inference": r["measurement"]["joules_per_inference"]["net"]["mean"],
                            "latency_ms": r["measurement"]["latency_ms"]["median_ms"]} for r in rows]}


def _onnx_params(path: Path) -> int:
    """Weights in an ONNX graph: elements of float initializers, or of the integer weights they were
    quantized to (scales and zero points not counted)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n > 1 and not init.name.endswith(("_scale", "_zero_point")):
            total += n
    return total


def stage_report(run: Run, out: Path) -> dict[str, Any]:
    from toolchain.report.build import build_report, write_report

    rows = json.loads((run.dir("compare") / "variants.json").read_text())
    search = run.stage("search")["metrics"]
    chosen = search["chosen"]
    precision = "INT8" if chosen["quant"] else "FP32 (INT8 measured costlier on this target)"
    spec = {"title": f"{run.model} on {run.target.name}: pruned, distilled, {precision}",
            "model": {"source": run.model, "sha256": run.manifest["inputs"]["model_hash"],
                      "task": run.manifest["inputs"].get("task")},
            "target": {"name": run.target.name, "carbon_g_per_kwh": run.target.carbon_g_per_kwh,
                       "carbon_source": run.target.carbon_source},
            "metric_name": rows[0]["metric_name"], "variants": rows,
            "pareto": [{"label": c["label"], "metric": c["metric"], "joules": c["joules"], "latency_ms": c["latency_ms"],
                        "config": {k: c[k] for k in ("prune_step", "predicted_energy_reduction", "temperature", "quant")}}
                       for c in search["candidates"]],
            "stages": [{"name": s, "status": run.stage(s).get("status"), "seconds": run.stage(s).get("seconds")}
                       for s in STAGES if s in run.manifest["stages"]],
            "notes": [f"every variant measured at batch {run.recipe.batch} on {run.target.name}: J/inference and latency "
                      f"per inference are per call / {run.recipe.batch}",
                      f"scheduler: {len(search['candidates'])} candidates (pruning point x distillation temperature x "
                      f"INT8 configuration) measured on {run.target.name}; chosen {chosen['label']} (objective "
                      f"{chosen['objective']:.3f} = {search['objective']}; weights {search['weights']}; grid "
                      f"{search['carbon_g_per_kwh']} gCO2e/kWh)",
                      f"recipe: {json.dumps(run.manifest['recipe'])}"]}
    report = build_report(spec)
    write_report(report, out, force=True)
    return {"headline": report.get("headline")}


STAGE_FUNCS: dict[str, Callable[[Run, Path], dict[str, Any]]] = {
    "baseline": stage_baseline, "prune": stage_prune, "search": stage_search, "distill": stage_distill, "export": stage_export,
    "quantize": stage_quantize, "profile": stage_profile, "compare": stage_compare, "report": stage_report}

# recipe fields each stage's result depends on (with the keys of the stages before it)
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "baseline": ("samples", "seq_len", "seed", "meter", "batch", "repeats", "window_s", "idle_s", "profile_runs"),
    "prune": ("importance", "target_energy_reduction", "max_accuracy_drop", "prune_budget", "prune_step",
              "finetune_epochs", "max_steps", "seed"),
    "search": ("search_points", "search_temperatures", "search_quant", "search_fp32", "search_budget", "w_accuracy", "w_energy",
               "w_carbon", "reference_carbon_g_per_kwh", "max_accuracy_drop", "distill_epochs", "alpha", "distill_lr",
               "calib_samples", "meter", "batch", "repeats", "window_s", "idle_s", "seed"),
    "distill": ("distill_epochs", "alpha", "distill_lr", "seed"),
    "export": (),
    "quantize": ("calib_samples",),
    "profile": ("meter", "batch", "repeats", "window_s", "idle_s", "profile_runs"),
    "compare": ("distill_only_width", "distill_epochs", "alpha", "distill_lr", "calib_samples", "meter", "batch",
                "repeats", "window_s", "idle_s", "profile_runs"),
    "report": (),
}


def _outputs_intact(root: Path, entry: dict[str, Any]) -> bool:
    files = entry.get("outputs") or {}
    return bool(files) and all((root / name).is_file() and sha256_file(root / name) == digest
                               for name, digest in files.items())


def _lock(root: Path) -> Path:
    from toolchain.core.fsio import pid_alive

    lock = root / ".lock"
    if lock.exists():
        pid = lock.read_text().strip()
        if pid_alive(pid) and pid != str(os.getpid()):
            raise ToolchainError(f"{root}: another pipeline (pid {pid}) is running in this directory",
                                 hint="wait for it, or choose another -o")
    lock.write_text(str(os.getpid()))
    return lock


def _publish(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``tmp`` directory (renames; the old one is removed after)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def run_pipeline(model: str, target_spec: str, data: str, output: str | Path, *, recipe_path: str | None = None,
                 overrides: dict[str, Any] | None = None, from_stage: str | None = None, until: str | None = None,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the stages (skipping finished ones whose inputs did not change) and return the manifest."""
    from toolchain.model.load import load_model
    from toolchain.profile.run import check_usable, versions
    from toolchain.targets.target import load_target

    for name, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in STAGES:
            raise ToolchainError(f"{name} {value!r} is not a stage", hint=f"stages: {', '.join(STAGES)}")
    if from_stage and until and STAGES.index(from_stage) > STAGES.index(until):
        raise ToolchainError(f"--from {from_stage} comes after --until {until}")
    recipe = Recipe.load(recipe_path, overrides)
    target = load_target(target_spec)
    check_usable(target)
    say = progress or (lambda _text: None)
    say("loading the model")
    loaded = load_model(model)
    root = Path(output).expanduser().resolve()
    if root in [Path(p).resolve() for p in loaded.input_paths] or (Path(data).exists() and
                                                                   Path(data).resolve() == root):
        raise ToolchainError(f"{output}: refusing to write into an input; choose another -o")
    if root.exists() and not root.is_dir():
        raise ToolchainError(f"{output}: exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    lock = _lock(root)
    try:
        remove_stale(root, ".*.tmp-*")  # stage directories of a killed run
        manifest_path = root / MANIFEST
        manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:
                manifest = {}
            if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
                manifest = {}
        data_hash = sha256_file(Path(data)) if Path(data).is_file() else None
        inputs = {"model": model, "model_hash": loaded.source_hash, "task": loaded.task, "data": data,
                  "data_sha256": data_hash, "target": target.to_dict()}
        manifest.update({"format": FORMAT, "format_version": FORMAT_VERSION, "inputs": inputs,
                         "recipe": asdict(recipe), "versions": versions()})
        manifest.setdefault("stages", {})
        run = Run(model, target, data, recipe, root, manifest, say)
        earlier = _key(inputs)
        last = STAGES.index(until) if until else len(STAGES) - 1
        for i, stage in enumerate(STAGES[:last + 1]):
            config = {k: getattr(recipe, k) for k in STAGE_FIELDS[stage]}
            key = _key(stage, config, earlier)
            entry = manifest["stages"].get(stage) or {}
            forced = from_stage is not None and i >= STAGES.index(from_stage)
            if not forced and entry.get("key") == key and entry.get("status") == "done" and _outputs_intact(root,
                                                                                                             entry):
                entry["reused"] = True
                say(f"{stage}: unchanged, reused")
                earlier = _key(key, entry["outputs"])  # what later stages build on: these exact files
                continue
            if from_stage and i < STAGES.index(from_stage):
                raise ToolchainError(f"--from {from_stage}: the earlier stage {stage} is not done with these inputs",
                                     hint=f"run without --from, or --from {stage}")
            tmp = root / f".{stage}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            manifest["stages"][stage] = {"status": "running", "key": key, "config": config}
            write_json(manifest_path, manifest)
            started = time.perf_counter()
            say(f"{stage}: running")
            try:
                metrics = STAGE_FUNCS[stage](run, tmp)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                manifest["stages"][stage]["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                write_json(manifest_path, manifest)
                if isinstance(exc, KeyboardInterrupt | ToolchainError):
                    done = [s for s in STAGES[:i] if manifest["stages"].get(s, {}).get("status") == "done"]
                    err = ToolchainError(f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else exc.message} "
                                         f"(in stage {stage})",
                                         hint=f"run the same command again: {', '.join(done) or 'no stage'} "
                                              "will be reused" if isinstance(exc, KeyboardInterrupt) else exc.hint)
                    err.exit_code = 130 if isinstance(exc, KeyboardInterrupt) else exc.exit_code
                    raise err from None
                raise
            _publish(tmp, root / stage)
            outputs = {str(p.relative_to(root)): sha256_file(p) for p in sorted((root / stage).rglob("*")) if p.is_file()}
            manifest["stages"][stage] = {"status": "done", "key": key, "config": config, "outputs": outputs,
                                         "metrics": metrics, "seconds": round(time.perf_counter() - started, 2),
                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reused": False}
            earlier = _key(key, outputs)
            for later in STAGES[i + 1:]:  # their inputs may have changed
                if later in manifest["stages"]:
                    manifest["stages"][later]["status"] = "stale"
            write_json(manifest_path, manifest)
        return manifest
    finally:
        lock.unlink(missing_ok=True)
