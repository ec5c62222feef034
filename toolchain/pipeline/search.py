"""The sustainability-aware scheduler (SuComp): the search stage.

The input model itself is always a candidate (FP32, and INT8 with each configuration), beside every
compressed one (pruning point x distillation temperature x INT8 configuration, FP32 too): each is evaluated
on the calibration part of the data (never the held-out test part) and measured on the target (windows
interleaved with the input's). :func:`choose` keeps the best by :func:`objective` among the
:func:`eligible` ones: within the accuracy budget and, unless it is the input, measured to use less energy
than the input; so the pipeline never delivers more energy for less accuracy than it was given. The
chosen candidate's files (student, ONNX, INT8) are kept: the later stages promote them instead of redoing
the work; every other candidate's files are removed. The Pareto fronts (energy, latency) are kept for the
report.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from toolchain.pipeline.context import (
    Run,
    datasets,
    distill_student,
    onnx_outputs,
    profile_options,
    quantize_onnx,
    run_metric,
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


def eligible(c: dict[str, Any], base: dict[str, Any], recipe: Recipe) -> bool:
    """Whether ``c`` may be delivered: within the accuracy budget, and (unless it is the input model itself)
    measured to use less energy per inference than the input."""
    within = base["metric"] - c["metric"] <= recipe.max_accuracy_drop + 1e-9
    return within and (c.get("input_fp32", False) or c["joules"] < base["joules"])


def choose(candidates: list[dict[str, Any]], base: dict[str, Any], recipe: Recipe, intensity: float) -> int | None:
    """Index of the candidate with the best :func:`objective` among the :func:`eligible` ones (ties: the
    first); None where none is."""
    scored = [(objective(c, base, recipe, intensity), -i) for i, c in enumerate(candidates) if eligible(c, base, recipe)]
    return -max(scored)[1] if scored else None


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


def _input_candidates(run: Run, out: Path, base_path: Path, quants: list[Any]) -> list[dict[str, Any]]:
    """The input model itself, FP32 (always a candidate) and INT8 with each configuration."""
    found = [{"label": "input FP32", "onnx": None, "work": None, "prune_dir": None, "prune_step": 0,
              "predicted_energy_reduction": 0.0, "temperature": None, "quant": None, "input_fp32": True}]
    for qi, q in enumerate(quants):
        if q is None:
            continue
        run.progress(f"search: the input model, quantize {q.label}")
        model = out / f"input.q{qi}.onnx"
        found.append({"label": f"input {q.label}", "onnx": model.name, "work": None, "prune_dir": None, "prune_step": 0,
                      "predicted_energy_reduction": 0.0, "temperature": None, "quant": q.label,
                      "quantize": quantize_onnx(run, base_path, model, q)})
    return found


def _compressed_candidates(run: Run, out: Path, quants: list[Any]) -> list[dict[str, Any]]:
    """Every (pruning point, temperature, INT8 configuration) of the grid: distilled, exported, quantized."""
    from toolchain.export.exporter import ExportOptions, export_model

    prune = run.metrics("prune")
    points = prune["candidates"] or [{"dir": ".", "step": 0, "metric": prune["metric"],
                                      "predicted_energy_reduction": 0.0, "params": prune["params_after"]}]
    grid = search_grid(run, len(points), len(quants))
    found: list[dict[str, Any]] = []
    distilled: dict[tuple[int, float], dict[str, Any]] = {}
    for n, (pi, temperature, qi) in enumerate(grid, 1):
        point = points[pi]
        prune_dir = run.dir("prune") / point["dir"]
        work = f"p{pi}-T{temperature:g}"
        if (pi, temperature) not in distilled:
            distilled[(pi, temperature)] = distill_student(
                run, str(prune_dir), out / work, f"search {n}/{len(grid)}: distill T={temperature:g}", temperature)
            export_model(student_model(prune_dir, out / work / "student.pt"), out / work / "model.onnx",
                         ExportOptions(parity=False))
        c = {"work": work, "prune_dir": point["dir"], "prune_step": point["step"],
             "predicted_energy_reduction": point["predicted_energy_reduction"], "temperature": temperature,
             "distill": distilled[(pi, temperature)]}
        if quants[qi] is None:
            found.append(c | {"label": f"p{pi} T={temperature:g} FP32", "onnx": f"{work}/model.onnx", "quant": None})
            continue
        label = quants[qi].label
        run.progress(f"search {n}/{len(grid)}: quantize {label}")
        model = f"{work}/model.q{qi}.onnx"
        found.append(c | {"label": f"p{pi} T={temperature:g} {label}", "onnx": model, "quant": label,
                          "quantize": quantize_onnx(run, out / work / "model.onnx", out / model, quants[qi])})
    return found


def _keep_only(out: Path, candidates: list[dict[str, Any]], keep: list[dict[str, Any]]) -> None:
    """Remove the files of every candidate not in ``keep`` (the chosen one, its INT8 counterpart and the
    input's INT8 files stay): the search's students are scratch once the choice is made."""
    import shutil

    kept_work = {c["work"] for c in keep if c.get("work")}
    # the kept students' FP32 files too: the export stage promotes them (the INT8 one may be the winner)
    kept_files = {c["onnx"] for c in keep if c.get("onnx")} | {f"{w}/model.onnx" for w in kept_work}
    for work in {c["work"] for c in candidates if c.get("work")} - kept_work:
        shutil.rmtree(out / work, ignore_errors=True)
    for c in candidates:
        if c.get("work") in kept_work and c.get("onnx") and c["onnx"] not in kept_files:
            (out / c["onnx"]).unlink(missing_ok=True)
    for work in kept_work:
        (out / work / "checkpoint.pt").unlink(missing_ok=True)
    for c in candidates:
        c["kept"] = c["onnx"] is None or (out / c["onnx"]).is_file()


def stage_search(run: Run, out: Path) -> dict[str, Any]:
    """The sustainability-aware scheduler: the input model (FP32 and INT8) and every compressed candidate,
    evaluated on the calibration part and measured on the target; the chosen candidate's files are kept
    for the later stages to promote."""
    from toolchain.profile.run import compare_models
    from toolchain.report import pareto_front

    r = run.recipe
    base_path = run.dir("baseline") / "model.onnx"
    quants = int8_choices(run, base_path)
    calibration = datasets(run).calibration
    reference = onnx_outputs(base_path, calibration)
    candidates = _input_candidates(run, out, base_path, quants) + _compressed_candidates(run, out, quants)
    for c in candidates:  # selection is judged on the calibration part; the test part is only reported
        c["metric"], _ = run_metric(run, out / c["onnx"] if c["onnx"] else base_path, calibration, reference)
    measured = [c for c in candidates if c["onnx"]]
    run.progress(f"search: measuring {len(measured)} candidates and the input model, windows interleaved")
    paths = [str(base_path), *[str(out / c["onnx"]) for c in measured]]
    comparison = compare_models(paths, [run.target], profile_options(run, SEARCH_PROFILE_RUNS), progress=run.progress)
    tables = {path: comparison.tables[(path, run.target.name)] for path in paths}
    base = {"metric": run.metrics("baseline")["selection_metric"], "joules": tables[str(base_path)].joules_per_inference,
            "latency_ms": tables[str(base_path)].measured.latency_ms.median_ms}
    for c in candidates:
        t = tables[str(out / c["onnx"]) if c["onnx"] else str(base_path)]
        c["joules"] = t.joules_per_inference
        c["latency_ms"] = t.measured.latency_ms.median_ms
        c["joules_cv_pct"] = t.measured.joules_per_inference.net.cv_pct
        c["objective"] = objective(c, base, r, run.target.carbon_g_per_kwh)
        c["within_budget"] = base["metric"] - c["metric"] <= r.max_accuracy_drop + 1e-9
        c["eligible"] = eligible(c, base, r)
    best = choose(candidates, base, r, run.target.carbon_g_per_kwh)
    assert best is not None  # the input FP32 model is always eligible
    for key, flag in (("joules", "front_energy"), ("latency_ms", "front_latency")):
        front = pareto_front(candidates, key)
        for i, c in enumerate(candidates):
            c[flag] = i in front
    win = candidates[best]
    # the INT8 file beside an FP32 student (shown in the comparison); the configuration of "INT8 only"
    same = [c for c in candidates if c["quant"] and c.get("work") and c.get("work") == win.get("work")]
    counterpart = min(same, key=lambda c: c["joules"]) if not win["quant"] and same else None
    int8 = win["quant"] or (counterpart or {}).get("quant") or next(q.label for q in quants if q is not None)
    _keep_only(out, candidates, [win, *([counterpart] if counterpart else [])])
    return {"baseline": base, "meter": tables[str(base_path)].meter, "carbon_g_per_kwh": run.target.carbon_g_per_kwh,
            "objective": OBJECTIVE, "selected_on": "calibration",
            "weights": {"accuracy": r.w_accuracy, "energy": r.w_energy, "carbon": r.w_carbon,
                        "reference_carbon_g_per_kwh": r.reference_carbon_g_per_kwh},
            "candidates": candidates, "chosen": win, "int8": int8, "int8_counterpart": counterpart,
            "input_int8": {c["quant"]: c["onnx"] for c in candidates if c["prune_dir"] is None and c["quant"]},
            "why": why_chosen(win, candidates, base, r)}


def why_chosen(win: dict[str, Any], candidates: list[dict[str, Any]], base: dict[str, Any], recipe: Recipe) -> str:
    """One sentence, from the measurements: what was chosen and why."""
    if win.get("input_fp32"):
        over = [c for c in candidates if not c["within_budget"]]
        costlier = [c for c in candidates if c["within_budget"] and c["joules"] >= base["joules"] and c is not win]
        parts = []
        if over:
            parts.append(f"{len(over)} over the {recipe.max_accuracy_drop:g}-point budget")
        if costlier:
            parts.append(f"{len(costlier)} within it but measured no less energy than the input")
        return ("nothing beat the input: of " f"{len(candidates) - 1} compressed candidates, {', '.join(parts) or 'none qualified'}"
                "; the input model is delivered unchanged")
    saved = 1 - win["joules"] / base["joules"]
    return (f"{win['label']}: the best objective ({win['objective']:.3f}) among the candidates within the "
            f"{recipe.max_accuracy_drop:g}-point budget that use less energy than the input; {saved:.0%} less energy "
            f"per inference in the search's measurement, {win['metric'] - base['metric']:+.2f} points on the "
            "calibration part")
