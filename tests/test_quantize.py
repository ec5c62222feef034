"""INT8 quantization: configurations, metadata, accuracy guard, --auto decisions, bad input."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.data.dataset import DataOptions
from toolchain.data.load import load_dataset
from toolchain.formats.nodemap import NodeModuleMap
from toolchain.quantize import auto, guard, measure, qdq, static
from toolchain.quantize.sensitivity import Ranking
from toolchain.runtime import outputs as rt_outputs
from toolchain.targets import presets


@pytest.fixture(scope="module")
def mnist_data(mnist_cnn):
    _, result = mnist_cnn
    ds = load_dataset("builtin:mnist", result.path, DataOptions(samples=600))
    return result.path, ds.take(0, 100), ds.take(100, None)


def test_labels_name_the_configuration():
    assert presets.QuantConfig().label == "static QDQ U8S8 per-channel minmax"
    assert presets.QuantConfig(activations="int8", reduce_range=True).label == "static QDQ S8S8 per-channel minmax reduce-range"
    assert presets.QuantConfig(mode="dynamic").label == "dynamic S8 per-channel"
    with pytest.raises(ToolchainError, match="calibration"):
        presets.QuantConfig(calibration="magic").validate()
    assert set(presets.PRESETS) == {"x86-vnni", "x86", "openvino", "arm64", "gpu"}
    assert presets.PRESETS["gpu"].static.symmetric_activations and presets.PRESETS["arm64"].static.activations == "int8"
    with pytest.raises(ToolchainError, match="unknown quantization preset"):
        presets.preset("tpu")


@pytest.mark.parametrize("config", [presets.QuantConfig(), presets.QuantConfig(activations="int8", calibration="percentile"),
                                    presets.QuantConfig(fmt="qoperator"), presets.QuantConfig(calibration="entropy")])
def test_static_quantization_keeps_accuracy_and_provenance(mnist_data, tmp_path, config):
    fp32, calib, evaluation = mnist_data
    result = static.quantize_model(fp32, tmp_path / "int8.onnx", config, calib, preset_name="x86")
    assert result.size_ratio < 0.3  # int8 weights: about a quarter of the float32 bytes
    model = onnx.load(result.path)
    ops = {n.op_type for n in model.graph.node}
    assert ("QuantizeLinear" in ops) if config.fmt == "qdq" else ("QLinearConv" in ops)
    meta = {p.key: p.value for p in model.metadata_props}
    stamp = json.loads(meta[static.QUANT_KEY])
    assert stamp["calibration"]["sha256"] == calib.sha256 and stamp["calibration"]["samples"] == 100
    assert stamp["config"]["calibration"] == config.calibration and stamp["preset"] == "x86"
    assert meta["toolchain.source"] == "mnist-cnn"  # the FP32 provenance travels along
    assert NodeModuleMap.from_model(model) is not None
    from toolchain.runtime.session import create_session

    fids = rt_outputs.fidelity(rt_outputs.run_outputs(create_session(fp32), evaluation),
                      rt_outputs.run_outputs(create_session(result.path), evaluation), evaluation.labels, classifier=True)
    assert fids.accuracy_fp32 > 0.97 and fids.accuracy_drop_points <= 1.0 and fids.agreement > 0.98


def test_dynamic_quantization_of_a_transformer(tiny_bert, tmp_path):
    loaded, result = tiny_bert
    out = static.quantize_model(result.path, tmp_path / "dyn.onnx", presets.QuantConfig(mode="dynamic"))
    assert out.fused == "bert"  # ORT's transformer fusions ran first
    ops = {n.op_type for n in onnx.load(out.path).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention", "DynamicQuantizeLinear"}


def test_static_needs_calibration_and_refuses_to_overwrite(mnist_data, tmp_path):
    fp32, calib, _ = mnist_data
    with pytest.raises(ToolchainError, match="calibration"):
        static.quantize_model(fp32, tmp_path / "a.onnx", presets.QuantConfig(), None)
    with pytest.raises(ToolchainError, match="refusing to overwrite an input"):
        static.quantize_model(fp32, fp32, presets.QuantConfig(), calib, force=True)
    existing = tmp_path / "b.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(ToolchainError, match="--force"):
        static.quantize_model(fp32, existing, presets.QuantConfig(), calib)
    assert existing.read_bytes() == b"keep me"


def test_sensitive_nodes_rank_real_nodes(mnist_data, tmp_path):
    fp32, calib, _ = mnist_data
    pre = tmp_path / "pre.onnx"
    res = static.quantize_model(fp32, tmp_path / "i.onnx", presets.QuantConfig(), calib, keep_preprocessed=pre)
    ranking = guard.sensitive_nodes(pre, res.path, calib.take(0, 16))
    names = {n.name for n in onnx.load(str(pre)).graph.node}
    assert ranking and all(name in names for name, _ in ranking)
    scores = [s for _, s in ranking]
    assert scores == sorted(scores)


def test_guard_excludes_nodes_until_the_budget_holds(mnist_data, tmp_path):
    fp32, calib, evaluation = mnist_data
    # a budget of zero disagreement on cosine-free terms forces at least one fallback step
    result, steps = guard.guard_accuracy(fp32, tmp_path / "g.onnx", presets.QuantConfig(), calib, evaluation.take(0, 200),
                                     max_accuracy_drop=-1.0, group=1, max_steps=2, batches=(1,), runs=3)
    assert result is None and not (tmp_path / "g.onnx").exists()  # an impossible budget writes nothing
    assert len(steps) == 3 and [bool(s.added) for s in steps] == [False, True, True]
    assert steps[2].excluded == (steps[1].excluded if steps[1].kept else []) + steps[2].added
    result, steps = guard.guard_accuracy(fp32, tmp_path / "g.onnx", presets.QuantConfig(), calib, evaluation.take(0, 200),
                                     max_accuracy_drop=5.0, batches=(1,), runs=3)
    assert result is not None and steps[-1].meets_budget and (tmp_path / "g.onnx").exists()


def test_auto_keeps_fp32_when_int8_does_not_pay(mnist_data, tmp_path, monkeypatch):
    fp32, calib, evaluation = mnist_data
    monkeypatch.setattr(measure, "MIN_SPEEDUP", 1000.0)  # no INT8 model can be 1000x faster
    result = auto.auto_quantize(fp32, tmp_path / "auto.onnx", calib, evaluation.take(0, 64), preset_name="x86",
                             batches=(1,), runs=3)
    assert result.chosen is None and result.recommendation.startswith("keep FP32")
    assert not (tmp_path / "auto.onnx").exists()
    assert [c.label for c in result.candidates][0] == "FP32" and len(result.candidates) == 1 + 3


def test_auto_ships_the_fastest_candidate_within_budget(mnist_data, tmp_path, monkeypatch):
    fp32, calib, evaluation = mnist_data
    monkeypatch.setattr(measure, "MIN_SPEEDUP", 0.0)
    result = auto.auto_quantize(fp32, tmp_path / "auto.onnx", calib, evaluation.take(0, 64), preset_name="x86",
                             batches=(1,), runs=3)
    viable = [c for c in result.candidates[1:] if c.meets_budget]
    best = max(viable, key=lambda c: measure.geomean(list(c.speedup.values())))
    assert result.chosen == best.label and (tmp_path / "auto.onnx").exists()


def test_cli_quantize_json_and_errors(mnist_cnn, tmp_path):
    _, result = mnist_cnn
    out = tmp_path / "m.int8.onnx"
    run = CliRunner().invoke(main, ["quantize", result.path, "--calib", "builtin:mnist", "--calib-samples", "50",
                                    "--eval-samples", "100", "--batch-sizes", "1", "--runs", "3", "--threads", "1",
                                    "-o", str(out), "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.output)
    assert report["timing"]["threads"] == 1  # --threads: the timing and the guard's ranking
    from toolchain.targets.presets import host_preset

    assert report["preset"] == host_preset() and report["preset_reason"].startswith(f"preset {host_preset()} ")
    assert report["notes"][0] == report["preset_reason"]
    assert report["evaluation"]["subset_of"] == "MNIST's training set"
    assert any("builtin:mnist is a subset of MNIST's training set" in n for n in report["notes"])
    assert "AVX512-VNNI" in report["preset_reason"] or host_preset() == "arm64"
    assert report["guard_selection"]["data"] == "calibration" and report["guard_selection"]["samples"] == 50
    assert report["output"] == str(out) and [r["label"] for r in report["rows"]][0] == "FP32"
    assert report["calibration"]["samples"] == 50 and report["evaluation"]["samples"] == 100
    # no budget flag: the default budget is still held by the guard, and what was written meets it
    assert report["guard"] and report["guard"][-1]["meets_budget"] and report["rows"][-1]["meets_budget"]
    empty = tmp_path / "empty.npz"
    import numpy as np

    np.savez(empty, pixel_values=np.zeros((0, 1, 28, 28), np.float32))
    for args, message in ((["--calib", str(empty)], "empty"), ([], "needs --calib"),
                          (["--calib", "builtin:mnist", "--target", "tpu"], "unknown target or quantization preset")):
        run = CliRunner().invoke(main, ["quantize", result.path, "-o", str(tmp_path / "x.onnx"), *args])
        assert run.exit_code == 2 and message in run.output and run.output.count("\n") == 1, run.output


def test_dynamic_guard_ranks_matmuls_and_keeps_them_in_fp32(tiny_bert, tmp_path):
    loaded, result = tiny_bert
    data = load_dataset("random", result.path, DataOptions(samples=16, seq_len=16))
    pre = tmp_path / "pre.onnx"
    static.quantize_model(result.path, tmp_path / "d.onnx", presets.QuantConfig(mode="dynamic"), keep_preprocessed=pre)
    ranking = guard.matmul_sensitivity(pre, data)
    matmuls = {n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "MatMul"}
    assert ranking and {name for name, _ in ranking} <= matmuls
    assert all(score > 0 for _, score in ranking)  # int8 noise is below the signal everywhere
    ranked = []
    selected = {}
    out, steps = guard.guard_accuracy(result.path, tmp_path / "g.onnx", presets.QuantConfig(mode="dynamic"), None, data,
                                  max_accuracy_drop=1.0, min_cosine=1.0, group=1, max_steps=2, batches=(1,), runs=3,
                                  threads=1, ranked=ranked, selected=selected)
    assert out is None and [len(s.added) for s in steps] == [0, 1, 1]
    # no calibration data: the guard decides on half the evaluation samples and reports on the other half
    assert selected["data"] == "evaluation" and selected["split"] and selected["samples"] == 8
    assert all(s.fidelity.samples == 8 and s.selection_fidelity.samples == 8 for s in steps)
    assert steps[1].added == list(ranked[0].fallbacks[0].nodes)  # the best fallback per share of compute goes first
    assert {n for f in ranked[0].fallbacks for n in f.nodes} <= matmuls


def test_corrupt_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"garbage" * 20)
    run = CliRunner().invoke(main, ["quantize", str(bad), "--calib", "random", "-o", str(tmp_path / "x.onnx")])
    assert run.exit_code == 2 and "not a readable ONNX model" in run.output and run.output.count("\n") == 1


def test_quantization_leaves_nothing_in_the_working_directory(tiny_bert, tmp_path, monkeypatch):
    """ORT's symbolic shape inference gives up on this graph and dumps its temp model into the cwd."""
    loaded, result = tiny_bert
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data = load_dataset("random", result.path, DataOptions(samples=4))
    static.quantize_model(result.path, tmp_path / "q.onnx", presets.QuantConfig(), data, fuse=False)
    assert list(cwd.iterdir()) == []


def test_compaction_shrinks_the_file_and_keeps_the_kernels_ort_runs(tiny_resnet, tmp_path, monkeypatch):
    """FP32 biases instead of int32 ones with per-channel scales and zero points (ORT >= 1.21 quantizes them
    itself at load time), shared zero points, no stale value_info: a smaller file, the same fused graph."""
    import numpy as np

    from toolchain.runtime.session import create_session

    assert not qdq.ort_quantizes_float_bias("1.20.1") and qdq.ort_quantizes_float_bias("1.21.0")
    _, result = tiny_resnet
    data = load_dataset("random", result.path, DataOptions(samples=8))
    compact = static.quantize_model(result.path, tmp_path / "c.onnx", presets.QuantConfig(), data)
    monkeypatch.setattr(static, "compact_qdq", lambda model, reference=None: {})
    plain = static.quantize_model(result.path, tmp_path / "p.onnx", presets.QuantConfig(), data)
    assert compact.size_int8_bytes < plain.size_int8_bytes
    model = onnx.load(compact.path)
    stats = json.loads({p.key: p.value for p in model.metadata_props}[static.QUANT_KEY])["compaction"]
    import onnxruntime

    if qdq.ort_quantizes_float_bias(onnxruntime.__version__):
        inits = {t.name: t for t in model.graph.initializer}
        biased = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) == 3]
        assert stats["float_biases"] == len(biased) > 0
        assert all(inits[n.input[2]].data_type == onnx.TensorProto.FLOAT for n in biased)
    assert NodeModuleMap.from_model(model) is not None
    kernels, outputs = {}, {}
    for name, path in (("compact", compact.path), ("plain", plain.path)):
        optimized = tmp_path / f"{name}.opt.onnx"
        session = create_session(path, optimized_model_path=str(optimized))
        kernels[name] = sorted(n.op_type for n in onnx.load(str(optimized)).graph.node)
        outputs[name] = rt_outputs.run_outputs(session, data)
    assert kernels["compact"] == kernels["plain"] and "QLinearConv" in kernels["compact"]
    a, b = (outputs[k].reshape(len(data), -1) for k in ("compact", "plain"))
    assert np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)) > 0.9999


def test_quantize_job_defaults_are_the_command_defaults():
    """QuantizeJob() asks for what `toolchain quantize MODEL -o OUT` does without other flags."""
    from toolchain.commands.quantize import quantize
    from toolchain.quantize import QuantizeJob

    flags = quantize.make_context("quantize", ["m.onnx", "-o", "m.int8.onnx"]).params
    job = QuantizeJob(model="m.onnx", output="m.int8.onnx")
    renamed = {"calib": "calib_data", "eval_": "eval_data", "preset_name": "target"}
    for flag, default in flags.items():
        if flag in ("model", "output", "as_json"):
            continue
        if flag == "batch_sizes":
            assert job.batch_sizes == tuple(int(b) for b in default.split(","))
        elif flag == "no_fusion":
            assert job.fuse is not default
        elif flag == "providers":
            assert job.providers == tuple(default)
        else:
            assert getattr(job, renamed.get(flag, flag)) == default, flag


def test_cli_quantize_table(mnist_cnn, tmp_path):
    """The people's output: one row per model with its median latency at each batch size."""
    _, result = mnist_cnn
    run = CliRunner().invoke(main, ["quantize", result.path, "--calib", "builtin:mnist", "--calib-samples", "50",
                                    "--eval-samples", "100", "--batch-sizes", "1", "--runs", "3",
                                    "-o", str(tmp_path / "t.onnx")])
    assert run.exit_code == 0, run.output
    assert "FP32 vs INT8 on cpu" in run.output and "b1 ms" in run.output and str(tmp_path / "t.onnx") in run.output
    # the library's notes name options; the command spells them as flags
    text = " ".join(run.output.split())
    assert "\x1f" not in run.output and ("is not faster here" not in text or "(try --auto)" in text)


def test_default_budget_is_always_checked_and_an_over_budget_model_is_not_written(mnist_cnn, tmp_path, monkeypatch):
    """No budget flag: the help's defaults (1 point, cosine 0.99) still apply; a model the guard cannot bring
    within them is not written, and the command says which budget failed and the best it reached (exit 2)."""
    _, result = mnist_cnn
    seen = []

    def over_budget(fid, max_drop, min_cosine):
        seen.append((max_drop, min_cosine))
        return False, "forced"

    monkeypatch.setattr(guard, "within_budget", over_budget)
    monkeypatch.setattr(guard, "rank_nodes", lambda *a, **k: Ranking(0.0, None, []))  # no fallbacks: fail fast
    out = tmp_path / "over.onnx"
    run = CliRunner().invoke(main, ["quantize", result.path, "--calib", "builtin:mnist", "--calib-samples", "50",
                                    "--eval-samples", "100", "--batch-sizes", "1", "--runs", "3", "-o", str(out)])
    assert run.exit_code == 2 and run.output.count("\n") == 1, run.output
    assert seen and set(seen) == {(measure.DEFAULT_MAX_ACCURACY_DROP, measure.DEFAULT_MIN_COSINE)} == {(1.0, 0.99)}
    assert "--max-accuracy-drop 1 (accuracy drop <= 1 point)" in run.output and "best reached accuracy drop" in run.output
    assert "✓" not in run.output and not out.exists() and list(tmp_path.iterdir()) == []
    # the Python API: the same line, and the report of what was tried
    from toolchain.quantize import BudgetError, QuantizeJob, run_quantize

    lines = []
    with pytest.raises(BudgetError, match=r"max_accuracy_drop=1 \[--max-accuracy-drop 1\]") as caught:
        run_quantize(QuantizeJob(model=result.path, output=str(out), calib_data="builtin:mnist", calib_samples=50,
                                 eval_samples=100, batch_sizes=(1,), runs=3), progress=lines.append)
    assert caught.value.exit_code == 2 and caught.value.report["failed"] and caught.value.report["output"] is None
    assert any("calibrating on 50 samples" in line for line in lines) and any("measuring" in line for line in lines)
    assert not out.exists()
    # --json: the report still comes out on stdout, the error line on stderr
    run = CliRunner().invoke(main, ["quantize", result.path, "--calib", "builtin:mnist", "--calib-samples", "50",
                                    "--eval-samples", "100", "--batch-sizes", "1", "--runs", "3", "-o", str(out),
                                    "--json"])
    assert run.exit_code == 2 and json.loads(run.stdout)["failed"] is True and not out.exists()


def test_a_cosine_budget_failure_names_the_cosine_budget(tiny_bert, tmp_path, monkeypatch):
    _, result = tiny_bert
    monkeypatch.setattr(guard, "rank_nodes", lambda *a, **k: Ranking(0.0, None, []))
    out = tmp_path / "cos.onnx"
    run = CliRunner().invoke(main, ["quantize", result.path, "--mode", "dynamic", "--calib", "random", "--calib-samples",
                                    "4", "--eval-samples", "8", "--seq-len", "16", "--min-cosine", "1", "--batch-sizes",
                                    "1", "--runs", "3", "-o", str(out)])
    assert run.exit_code == 2 and run.output.count("\n") == 1, run.output
    assert "--min-cosine 1 (cosine >= 1)" in run.output and "best reached cosine 0." in run.output
    assert "point" not in run.output and not out.exists()


def test_without_calibration_data_the_report_names_the_split_evaluation_set(tiny_bert, tmp_path, monkeypatch):
    _, result = tiny_bert
    monkeypatch.setattr(guard, "rank_nodes", lambda *a, **k: Ranking(0.0, None, []))
    run = CliRunner().invoke(main, ["quantize", result.path, "--mode", "dynamic", "--eval", "random", "--eval-samples",
                                    "8", "--seq-len", "16", "--min-cosine", "1", "--batch-sizes", "1", "--runs", "3",
                                    "--threads", "1", "-o", str(tmp_path / "s.onnx"), "--json"])
    assert run.exit_code == 2, run.output
    report = json.loads(run.stdout)
    assert report["evaluation"]["samples"] == 4 and report["evaluation"]["selection_samples"] == 4
    assert report["guard_selection"]["split"] and report["guard_selection"]["data"] == "evaluation"
    assert all(row["fidelity"]["samples"] == 4 for row in report["rows"])


def test_auto_runs_the_guard_when_no_candidate_meets_the_budget(mnist_data, tmp_path, monkeypatch):
    """Every candidate over budget: the guard keeps the fastest one's sensitive nodes in FP32 before giving up."""
    fp32, calib, evaluation = mnist_data
    monkeypatch.setattr(measure, "MIN_SPEEDUP", 0.0)
    monkeypatch.setattr(auto, "within_budget", lambda fid, a, b: (False, "forced"))
    calls = []

    def second_step_passes(fid, a, b):
        calls.append(fid)
        return len(calls) > 1, "" if len(calls) > 1 else "forced"

    monkeypatch.setattr(guard, "within_budget", second_step_passes)
    lines = []
    result = auto.auto_quantize(fp32, tmp_path / "auto.onnx", calib, evaluation.take(0, 64), preset_name="x86",
                                batches=(1,), runs=3, progress=lines.append)
    measured = result.candidates[1:4]
    fastest = max(measured, key=lambda c: measure.geomean(list(c.speedup.values())))
    assert [len(s.excluded) for s in result.guard] == [0, 2] and result.missed_budget is None
    assert result.chosen == f"{fastest.label} (2 nodes FP32)" and (tmp_path / "auto.onnx").exists()
    stamp = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "auto.onnx")).metadata_props}[static.QUANT_KEY])
    assert stamp["config"]["exclude"] == result.guard[-1].excluded
    assert [line for line in lines if line.startswith("candidate ") and ": " not in line] == [
        f"candidate {i}/3 ({c.label})" for i, c in enumerate(measured, 1)]
    assert any("guard step 2/7 (2 nodes in FP32)" in line for line in lines)
    # the guard cannot meet it either: nothing written, and the line says which budget and the best reached
    monkeypatch.setattr(guard, "within_budget", lambda fid, a, b: (False, "forced"))
    monkeypatch.setattr(guard, "rank_nodes", lambda *a, **k: Ranking(0.0, None, []))
    result = auto.auto_quantize(fp32, tmp_path / "none.onnx", calib, evaluation.take(0, 64), preset_name="x86",
                                batches=(1,), runs=3, max_accuracy_drop=0.5)
    assert result.chosen is None and result.guard and not (tmp_path / "none.onnx").exists()
    assert "max_accuracy_drop=0.5" in result.missed_budget and "best reached accuracy drop" in result.missed_budget


def test_the_help_states_the_default_budgets():
    from toolchain.commands.quantize import quantize

    helps = {p.name: " ".join(p.help.split()) for p in quantize.params if getattr(p, "help", None)}
    assert helps["max_accuracy_drop"].endswith(f"Default {measure.DEFAULT_MAX_ACCURACY_DROP:g}.")
    assert helps["min_cosine"].endswith(f"Default {measure.DEFAULT_MIN_COSINE:g}.")
