"""toolchain pipeline: the scheduler's choice, recipes, a whole run on the MNIST CNN, and a run killed in
the middle of a stage that finishes on the next call, reusing the stages already done."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner

import toolchain.pipeline
from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.pipeline import (
    STAGE_FIELDS,
    STAGE_FUNCS,
    STAGES,
    Recipe,
    choose,
    lock_run_dir,
    objective,
    stage_key,
)

FAST = """
samples = 600
repeats = 2
window_s = 0.2
idle_s = 0
profile_runs = 3
max_steps = 3
prune_step = 0.25
distill_epochs = 1
calib_samples = 32
search_points = 2
search_temperatures = [4.0]
search_quant = 1
max_accuracy_drop = 3.0
"""


def test_a_dirtier_grid_makes_the_scheduler_compress_harder():
    base = {"metric": 90.0, "joules": 1.0}
    candidates = [{"metric": 89.9, "joules": 0.60},   # mild
                  {"metric": 89.7, "joules": 0.45},   # aggressive, within the budget
                  {"metric": 88.0, "joules": 0.20}]   # over the budget: never chosen
    recipe = Recipe(max_accuracy_drop=1.0, w_accuracy=1.0, w_energy=0.2, w_carbon=1.0)
    assert choose(candidates, base, recipe, intensity=50.0) == 0
    assert choose(candidates, base, recipe, intensity=800.0) == 1
    assert objective(candidates[1], base, recipe, 800.0) > objective(candidates[0], base, recipe, 800.0)
    assert choose([candidates[2]], base, recipe, intensity=800.0) is None


def test_recipe_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune]\ntarget_energy_reduction = 1.5\n")
    with pytest.raises(ToolchainError, match="out of range"):
        Recipe.load(bad)
    bad.write_text("speed = 3\n")
    with pytest.raises(ToolchainError, match="unknown key 'speed'"):
        Recipe.load(bad)
    bad.write_text("not toml [")
    with pytest.raises(ToolchainError, match="not a readable recipe"):
        Recipe.load(bad)
    r = CliRunner().invoke(main, ["pipeline", "--recipe", str(bad), "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "not a readable recipe" in r.output
    r = CliRunner().invoke(main, ["pipeline", "--target", "no-such-target", "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.count("\n") == 1


def test_changing_search_points_reruns_the_prune_stage():
    # the prune stage writes the scheduler's pruning candidates: search_points of them
    assert "search_points" in STAGE_FIELDS["prune"]
    assert stage_key("prune", Recipe(search_points=5), "earlier") != stage_key("prune", Recipe(), "earlier")
    assert stage_key("prune", Recipe(search_points=3), "earlier") == stage_key("prune", Recipe(), "earlier")


def _recipe_reads() -> dict[str, set[str]]:
    """The Recipe fields each stage function reads (``r.X``, ``recipe.X``, ``run.recipe.X``), following the
    calls it makes to the functions of toolchain.pipeline's modules."""
    names = {f.name for f in fields(Recipe)}
    funcs: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(Path(toolchain.pipeline.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                funcs.setdefault(node.name, []).append(node)

    def is_recipe(e: ast.expr) -> bool:
        return (isinstance(e, ast.Name) and e.id in ("r", "recipe")) or (isinstance(e, ast.Attribute)
                                                                         and e.attr == "recipe")

    def reads(name: str | None, seen: set[str]) -> set[str]:
        if name is None or name in seen or name not in funcs:
            return set()
        seen.add(name)
        found: set[str] = set()
        for node in (n for fn in funcs[name] for n in ast.walk(fn)):
            if isinstance(node, ast.Attribute) and node.attr in names and is_recipe(node.value):
                found.add(node.attr)
            elif isinstance(node, ast.Call):
                callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
                found |= reads(callee, seen)
        return found

    return {stage: reads(func.__name__, set()) for stage, func in STAGE_FUNCS.items()}


def test_every_recipe_field_a_stage_reads_is_declared_for_it():
    reads = _recipe_reads()
    assert set(reads) == set(STAGES) and reads["prune"] >= {"importance", "search_points"}  # the scan finds reads
    for stage in STAGES:
        assert reads[stage] == set(STAGE_FIELDS[stage]), (
            f"{stage}: reads but does not declare {sorted(reads[stage] - set(STAGE_FIELDS[stage]))}, declares but "
            f"does not read {sorted(set(STAGE_FIELDS[stage]) - reads[stage])} (Recipe field metadata 'stages')")


def test_help_quotes_the_recipe_defaults():
    r = CliRunner().invoke(main, ["pipeline", "--help"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    default = Recipe()
    quoted = re.findall(r"\(recipe default ([^)]+)\)", text)
    assert quoted == [str(default.max_accuracy_drop), str(default.target_energy_reduction), str(default.samples)]
    assert f"(recipe default {default.target_energy_reduction})" in text


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "toolchain.cli", "pipeline", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_pipeline_runs_resumes_after_a_kill_and_reports(tmp_path):
    recipe = tmp_path / "fast.toml"
    recipe.write_text(FAST)
    run_dir = tmp_path / "run"
    args = ["--model", "mnist-cnn", "--data", "builtin:mnist", "--meter", "estimate", "--recipe", str(recipe),
            "-o", str(run_dir), "--json"]
    # killed (SIGKILL: no clean-up of its own) while the search stage runs
    proc = _run(args, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if list(run_dir.glob(".search.toolchain-tmp-*")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["baseline"]["status"] == "done" and manifest["stages"]["search"]["status"] == "running"
    assert not (run_dir / "search").exists()  # nothing half-written where a finished stage would be

    r = CliRunner().invoke(main, ["pipeline", *args])
    assert r.exit_code == 0, r.output
    manifest = json.loads(r.output)
    stages = manifest["stages"]
    assert stages["baseline"]["reused"] and stages["prune"]["reused"] and not stages["search"]["reused"]
    assert all(stages[s]["status"] == "done" for s in stages)
    assert not list(run_dir.glob(".*.toolchain-*")) and not (run_dir / ".lock").exists()
    assert all((run_dir / name).is_file() for name in stages["quantize"]["outputs"])
    # the artifact (INT8, or FP32 where the scheduler measured INT8 costlier), its cost table and the report
    profile = stages["profile"]["metrics"]
    chosen = stages["search"]["metrics"]["chosen"]
    compressed = chosen["prune_dir"] is not None
    assert profile["artifact"] == ("quantize/model.int8.onnx" if chosen["quant"] else
                                   "export/model.onnx" if compressed else "baseline/model.onnx")
    if compressed:  # the search's winner is promoted, not distilled or exported again
        assert stages["distill"]["metrics"]["promoted_from"] == f"search/{chosen['work']}"
        assert stages["distill"]["seconds"] < 5 and (run_dir / "distill" / "student.pt").is_file()
        assert stages["export"]["metrics"]["parity"] and (run_dir / "export" / "model.onnx").is_file()
    # the data: three disjoint parts; only the test part is reported
    splits = stages["baseline"]["metrics"]["splits"]
    assert [splits[k]["samples"] for k in ("train", "calibration", "test")] == [360, 90, 150]
    assert stages["compare"]["metrics"]["evaluated_on"]["samples"] == 150
    costs = json.loads((run_dir / "profile" / "costs.json").read_text())
    assert costs["model"]["precision"] == profile["precision"] and costs["rows"]
    report = json.loads((run_dir / "report" / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    assert names[:4] == ["baseline (FP32)", "pruning only", "INT8 only", "distillation only"]
    assert names[-1].startswith("full pipeline" if compressed else "delivered: the input")
    assert report["title"].startswith("mnist-cnn on x86-cpu: ") and "(150 samples)" in report["title"]
    assert report["estimated"] and "ESTIMATED" in (run_dir / "report" / "report.md").read_text()
    assert stages["baseline"]["metrics"]["data_subset_of"] == "MNIST's training set"
    assert report["notes"][0].startswith("builtin:mnist is a subset of MNIST's training set")
    assert report["pareto"]["points"] and any(p["front_energy"] for p in report["pareto"]["points"])
    search = stages["search"]["metrics"]
    labels = [c["label"] for c in search["candidates"]]
    assert len(labels) == 6 and labels[0] == "input FP32" and labels[1].startswith("input static")
    assert search["chosen"]["label"] in labels and search["chosen"]["eligible"]
    assert search["baseline"]["metric"] - search["chosen"]["metric"] <= 3.0 + 1e-9

    # nothing changed: everything is reused; a changed recipe re-runs from the stage it touches
    r = CliRunner().invoke(main, ["pipeline", *args])
    assert r.exit_code == 0, r.output
    assert all(s["reused"] for s in json.loads(r.output)["stages"].values())
    recipe.write_text(FAST.replace("calib_samples = 32", "calib_samples = 16"))
    r = CliRunner().invoke(main, ["pipeline", *args, "--until", "quantize"])
    assert r.exit_code == 0, r.output
    stages = json.loads(r.output)["stages"]
    assert stages["prune"]["reused"] and not stages["search"]["reused"] and stages["profile"]["status"] == "stale"


def test_pipeline_refuses_a_running_directory_and_bad_stage_ranges(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    held = lock_run_dir(run_dir)  # held (flock) as another process would: a run here is refused
    try:
        r = CliRunner().invoke(main, ["pipeline", "--model", "mnist-cnn", "--data", "builtin:mnist", "--meter", "estimate",
                                      "-o", str(run_dir)])
    finally:
        held.release()
    assert r.exit_code == 2 and f"another pipeline (pid {os.getpid()})" in r.output
    r = CliRunner().invoke(main, ["pipeline", "--from", "report", "--until", "prune", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "comes after" in r.output
    assert not (run_dir / ".lock").exists()
