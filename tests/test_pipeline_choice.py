"""The pipeline never delivers a model worse than its input, a user's metric decides, and the same seed and
inputs prune to the same widths."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from toolchain.core.errors import ToolchainError
from toolchain.pipeline import PipelineJob, Recipe, choose, run_pipeline
from toolchain.pipeline.search import eligible

FAST = dict(samples=600, repeats=2, window_s=0.2, idle_s=0, profile_runs=3, max_steps=3, prune_step=0.25,
            distill_epochs=1, calib_samples=32, search_points=2, search_temperatures=(4.0,), search_quant=1,
            max_accuracy_drop=3.0, meter="estimate")


def test_a_costlier_candidate_is_never_chosen_even_when_more_accurate():
    recipe = Recipe(max_accuracy_drop=1.0, w_accuracy=1.0, w_energy=1.0, w_carbon=0.0)
    base = {"metric": 90.0, "joules": 1.0}
    candidates = [{"label": "input FP32", "metric": 90.0, "joules": 1.0, "input_fp32": True},
                  {"label": "more accurate, costlier", "metric": 90.9, "joules": 1.05},
                  {"label": "over budget, cheap", "metric": 80.0, "joules": 0.1}]
    assert not eligible(candidates[1], base, recipe) and not eligible(candidates[2], base, recipe)
    assert choose(candidates, base, recipe, intensity=436.0) == 0
    candidates.append({"label": "cheaper, within", "metric": 89.8, "joules": 0.5})
    assert choose(candidates, base, recipe, intensity=436.0) == 3


class InputOnly:
    """A user's metric that scores 100 for the input model's own outputs and 0 for anything else: every
    compressed candidate is worse than the input."""

    def __init__(self):
        self.first: dict[tuple, np.ndarray] = {}
        self.calls = 0

    def __call__(self, outputs, labels):
        self.calls += 1
        ref = self.first.setdefault(outputs.shape, np.array(outputs, copy=True))
        return 100.0 if np.allclose(ref, outputs, atol=1e-6) else 0.0


def test_when_every_compressed_candidate_is_worse_the_input_is_delivered(tmp_path):
    metric = InputOnly()
    job = PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", tmp_path / "run", recipe=Recipe(**FAST),
                      metric=metric, metric_name="input-only score")
    manifest = run_pipeline(job)
    stages = manifest.stages
    search = stages["search"].metrics
    assert metric.calls > 5 and search["chosen"]["label"] == "input FP32"
    assert all(c["metric"] == 0.0 for c in search["candidates"][1:])  # every candidate judged worse
    assert "nothing beat the input" in search["why"]
    for stage in ("distill", "export", "quantize"):
        assert "skipped" in stages[stage].metrics
    assert stages["profile"].metrics["artifact"] == "baseline/model.onnx"
    assert stages["profile"].metrics["promoted_from"] == "baseline/costs.json"
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert "nothing beat the input; delivered unchanged" in report["title"]
    assert report["variants"][-1]["name"] == "delivered: the input model, unchanged"
    assert report["metric"]["name"] == "input-only score"
    assert report["variants"][-1]["metric"] == report["variants"][0]["metric"] == 100.0


def test_a_failing_user_metric_is_one_clear_error(tmp_path):
    def broken(outputs, labels):
        raise ValueError("no labels here")

    job = PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", tmp_path / "run",
                      recipe=Recipe(**FAST), metric=broken, until="baseline")
    with pytest.raises(ToolchainError, match=r"the metric .*broken failed: ValueError: no labels here"):
        run_pipeline(job)


def test_held_out_data_that_is_the_training_data_is_refused(tmp_path):
    job = PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", tmp_path / "run", recipe=Recipe(**FAST),
                      eval_data="builtin:mnist", until="baseline")
    with pytest.raises(ToolchainError, match=r"is the training data"):
        run_pipeline(job)


def _timeless(value):
    """``value`` without its wall-clock fields (``seconds``)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_seed_and_inputs_prune_to_the_same_widths(tmp_path):
    first = tmp_path / "a"
    run_pipeline(PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", first, recipe=Recipe(**FAST), until="baseline"))
    second = tmp_path / "b"
    shutil.copytree(first, second)  # the same inputs: the same data split and the same measured cost table
    for run_dir in (first, second):
        run_pipeline(PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", run_dir, recipe=Recipe(**FAST),
                                 until="prune"))
    pruned = [json.loads((d / "prune" / "pruned.json").read_text()) for d in (first, second)]
    assert pruned[0]["modules"] == pruned[1]["modules"]
    assert _timeless(pruned[0]["result"]) == _timeless(pruned[1]["result"])
    names = sorted(p.relative_to(first / "prune") for p in (first / "prune").rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second / "prune") for p in (second / "prune").rglob("*") if p.is_file())
    for name in names:
        if name.suffix == ".json":
            assert _timeless(json.loads((first / "prune" / name).read_text())) == _timeless(
                json.loads((second / "prune" / name).read_text())), name
        else:
            assert _sha(first / "prune" / name) == _sha(second / "prune" / name), name
