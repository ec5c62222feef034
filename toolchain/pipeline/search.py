"""The sustainability-aware scheduler (SuComp): the search stage.

Every candidate (pruning point x distillation temperature x INT8 configuration, FP32 too) is distilled,
quantized, evaluated on the held-out data and measured on the target (windows interleaved with the
baseline's); :func:`choose` keeps the best by :func:`objective` within the accuracy budget, and the
Pareto fronts (energy, latency) are kept for the report.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.pipeline.context import (
    Run,
    datasets,
    distill_student,
    onnx_metric,
    onnx_outputs,
    profile_options,
    quantize_onnx,
    student_model,
)
from toolchain.pipeline.recipe import Recipe

OBJECTIVE = ("w_accuracy * (metric - metric_base) / max_accuracy_drop - w_energy * J / J_base "
             "- w_carbon * (intensity / reference_intensity) * gCO2e / gCO2e_base")
SEARCH_PROFILE_RUNS = 2  # the candidates' per-layer split is not reported: a short profile


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


def int8_choices(run: Run, base_path: Path) -> list[Any]:
    """The INT8 configurations the search tries (``search_quant`` of the target preset's), then None (FP32)
    where ``search_fp32``. As ``toolchain quantize`` does: static configurations for CNNs; transformers
    start from the preset's transformer configuration (dynamic on CPUs): static quantization of their
    activations wrecks them."""
    from toolchain.quantize import model_type
    from toolchain.targets.presets import preset

    r = run.recipe
    p = preset(run.target.quant_preset)
    transformer = model_type(base_path) is not None
    first = p.transformer if transformer else p.static
    configs = [c for c in (first, *p.candidates) if c.mode == "static" or transformer]
    quants: list[Any] = list({c.label: c for c in configs}.values())[:r.search_quant]
    if r.search_fp32:
        quants.append(None)
    return quants


def search_grid(run: Run, points: int, quants: int) -> list[tuple[int, float, int]]:
    """The candidates (pruning point, temperature, INT8 configuration index), within ``search_budget``."""
    r = run.recipe
    grid = list(itertools.product(range(points), r.search_temperatures, range(quants)))
    if r.search_budget == 0:  # no search: the most pruned point, the first temperature and configuration
        return [(points - 1, r.search_temperatures[0], 0)]
    if len(grid) > r.search_budget:  # spread the budget over the grid, the most pruned point first
        grid = sorted(grid, key=lambda g: (-g[0], g[1], g[2]))[:r.search_budget]
    return grid


def stage_search(run: Run, out: Path) -> dict[str, Any]:
    """The sustainability-aware scheduler: distill, quantize, evaluate and measure every candidate."""
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.profile.run import compare_models
    from toolchain.report import pareto_front

    r = run.recipe
    prune = run.metrics("prune")
    points = prune["candidates"] or [{"dir": ".", "step": 0, "metric": prune["metric"],
                                      "predicted_energy_reduction": 0.0, "params": prune["params_after"]}]
    base_path = run.dir("baseline") / "model.onnx"
    quants = int8_choices(run, base_path)
    grid = search_grid(run, len(points), len(quants))
    _, held = datasets(run)
    reference = onnx_outputs(base_path, held)
    candidates: list[dict[str, Any]] = []
    students: dict[tuple[int, float], Path] = {}
    for n, (pi, temperature, qi) in enumerate(grid, 1):
        point = points[pi]
        prune_dir = run.dir("prune") / point["dir"]
        if (pi, temperature) not in students:
            work = out / f"p{pi}-T{temperature:g}"
            distill_student(run, str(prune_dir), work, f"search {n}/{len(grid)}: distill T={temperature:g}",
                            temperature)
            export_model(student_model(prune_dir, work / "student.pt"), work / "model.onnx",
                         ExportOptions(parity=False))
            students[(pi, temperature)] = work
        work = students[(pi, temperature)]
        if quants[qi] is None:
            model, label = work / "model.onnx", "FP32"
        else:
            model, label = work / f"model.q{qi}.onnx", quants[qi].label
            run.progress(f"search {n}/{len(grid)}: quantize {label}")
            quantize_onnx(run, work / "model.onnx", model, quants[qi])
        metric, _ = onnx_metric(model, held, reference)
        candidates.append({"label": f"p{pi} T={temperature:g} {label}", "onnx": str(model.relative_to(out)),
                           "prune_dir": point["dir"], "prune_step": point["step"],
                           "predicted_energy_reduction": point["predicted_energy_reduction"], "temperature": temperature,
                           "quant": None if quants[qi] is None else label, "metric": metric})
    run.progress(f"search: measuring {len(candidates)} candidates and the baseline, windows interleaved")
    paths = [str(base_path), *[str(out / c["onnx"]) for c in candidates]]
    comparison = compare_models(paths, [run.target], profile_options(run, SEARCH_PROFILE_RUNS), progress=run.progress)
    tables = [comparison.tables[(path, run.target.name)] for path in paths]
    base_metric = run.metrics("baseline")["metric"]
    # cost-table reads by string keys (to be converted to formats.costs accessors)
    base = {"metric": base_metric, "joules": tables[0].joules_per_inference,
            "latency_ms": tables[0].measured.latency_ms.median_ms}
    for c, t in zip(candidates, tables[1:], strict=True):
        c["joules"] = t.joules_per_inference
        c["latency_ms"] = t.measured.latency_ms.median_ms
        c["joules_cv_pct"] = t.measured.joules_per_inference.net.cv_pct
        c["objective"] = objective(c, base, r, run.target.carbon_g_per_kwh)
    best = choose(candidates, base, r, run.target.carbon_g_per_kwh)
    if best is None:
        raise ToolchainError(f"no candidate stays within the accuracy budget of {r.max_accuracy_drop} points "
                             f"(best {max(c['metric'] for c in candidates):.2f} against {base_metric:.2f})",
                             hint="raise max_accuracy_drop, or lower prune_budget so INT8 and distillation keep more")
    for key, flag in (("joules", "front_energy"), ("latency_ms", "front_latency")):
        front = pareto_front(candidates, key)
        for i, c in enumerate(candidates):
            c[flag] = i in front
    for work in students.values():  # the search's students are scratch: the distill stage redoes the chosen one
        (work / "student.pt").unlink(missing_ok=True)
    # the INT8 configuration for the chosen student's INT8 artifact: the chosen one, else the best measured
    same_student = [c for c in candidates if c["quant"] and (c["prune_dir"], c["temperature"])
                    == (candidates[best]["prune_dir"], candidates[best]["temperature"])]
    int8 = candidates[best]["quant"] or (min(same_student, key=lambda c: c["joules"])["quant"] if same_student
                                         else quants[0].label)
    return {"baseline": base, "meter": tables[0].meter, "carbon_g_per_kwh": run.target.carbon_g_per_kwh,
            "objective": OBJECTIVE,
            "weights": {"accuracy": r.w_accuracy, "energy": r.w_energy, "carbon": r.w_carbon,
                        "reference_carbon_g_per_kwh": r.reference_carbon_g_per_kwh},
            "candidates": candidates, "chosen": candidates[best], "int8": int8}
