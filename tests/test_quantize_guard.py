"""The accuracy guard finds the nodes that matter: ranking by each node's own output error per share of
compute, kept steps that improve fidelity, undone ones recorded, and the trade shown in the report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import main
from toolchain.data.dataset import Dataset
from toolchain.quantize import guard, holdfp32, measure, sensitivity, static
from toolchain.runtime.outputs import Fidelity, fidelity, run_outputs
from toolchain.runtime.session import create_session
from toolchain.targets import presets

PER_TENSOR = presets.QuantConfig(per_channel=False)


def _outlier_net(path, outlier: float = 40.0, classifier: bool = True):
    """conv1 -> relu -> conv2 -> relu -> conv3 -> relu -> pool -> fc. conv2's weights hold one outlier, on
    an input channel conv1 leaves at zero (the activations keep their ranges): per-tensor int8 leaves every
    other weight of conv2 a few levels, so conv2's quantization is the harmful one."""
    rng = np.random.default_rng(0)

    def conv_w(cout, cin):
        return (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)

    w2 = conv_w(8, 8)
    w2[0, 0, 1, 1] = outlier * np.abs(w2).max()
    w1 = conv_w(8, 3)
    w1[0] = 0.0
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", w1), ("w2", w2), ("w3", conv_w(8, 8)),
        ("fc_w", (rng.standard_normal((8, 10)) * 0.5).astype(np.float32)),
        ("fc_b", np.zeros(10, np.float32)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], "conv3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c3"], ["r3"], "relu3"),
             helper.make_node("GlobalAveragePool", ["r3"], ["p"], "pool"),
             helper.make_node("Flatten", ["p"], ["f"], "flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits" if classifier else "g"], "fc")]
    if not classifier:  # (N, 10, 1): not logits, so the budget is the cosine
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        nodes.append(helper.make_node("Unsqueeze", ["g", "axes"], ["logits"], "unsqueeze"))
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10] if classifier else ["N", 10, 1])
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _data(n: int, seed: int) -> Dataset:
    return Dataset(f"random-{seed}", {"x": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)})


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outlier")
    fp32 = _outlier_net(tmp / "net.onnx")
    pre = tmp / "pre.onnx"
    res = static.quantize_model(fp32, tmp / "int8.onnx", PER_TENSOR, _data(32, 1), keep_preprocessed=pre)
    return fp32, str(pre), res.path


def test_multiply_accumulates_come_from_the_graph_shapes(outlier):
    fp32, _, _ = outlier
    macs = sensitivity.node_macs(onnx.load(fp32))
    assert macs["conv1"] == 8 * 16 * 16 * 3 * 9 and macs["conv2"] == macs["conv3"] == 8 * 16 * 16 * 8 * 9
    assert macs["fc"] == 10 * 8 and macs["relu1"] == 8 * 16 * 16  # elementwise: its output elements


def test_the_simulation_reproduces_the_int8_model(outlier):
    """The QDQ model's own scales applied to the FP32 graph give the INT8 model's outputs."""
    fp32, pre, qdq = outlier
    points, quantized = sensitivity.static_points(onnx.load(pre), onnx.load(qdq))
    assert {"conv1", "conv2", "conv3", "fc"} <= set(quantized) and not {"relu1", "relu2"} & set(quantized)
    assert {p.kind for p in points} == {"weight", "tensor"}
    shared = [p for p in points if p.kind == "tensor" and len(p.owners) == 2]
    assert shared and all(p.owners <= set(quantized) for p in shared)  # e.g. r1 between conv1 and conv2
    data = _data(16, 2)
    sim = create_session(sensitivity.simulate(onnx.load(pre), points).SerializeToString())
    real = run_outputs(create_session(qdq), data)
    ref = run_outputs(create_session(fp32), data)
    assert fidelity(real, run_outputs(sim, data), None, True).cosine > 0.999
    # excluding every quantized node leaves the FP32 model
    plain = create_session(sensitivity.simulate(onnx.load(pre), points, frozenset(quantized)).SerializeToString())
    assert np.allclose(run_outputs(plain, data), ref, atol=1e-5)


def test_a_node_kept_in_fp32_runs_in_fp32(outlier, tmp_path):
    """ONNX Runtime quantizes the float weights of a Conv between a DequantizeLinear and a QuantizeLinear
    at load time (per tensor): an excluded node (``QuantConfig.exclude``, the guard's fallbacks) must not
    be such a Conv, or it runs INT8 after all. quantize_model holds it in FP32; sessions run with every
    graph optimisation (create_session's default)."""
    from dataclasses import replace

    fp32, pre, qdq = outlier
    data = _data(32, 5)
    ref = run_outputs(create_session(fp32), data)
    excluded = static.quantize_model(fp32, tmp_path / "x.onnx", replace(PER_TENSOR, exclude=("conv2",)), _data(32, 1)).path
    points, _ = sensitivity.static_points(onnx.load(pre), onnx.load(qdq))
    expected = run_outputs(create_session(sensitivity.simulate(onnx.load(pre), points, frozenset({"conv2"}))
                                          .SerializeToString()), data)

    def error(path_or_out):
        out = run_outputs(create_session(path_or_out), data) if isinstance(path_or_out, str) else path_or_out
        return float(((out - ref) ** 2).sum() / (ref ** 2).sum())

    graph = onnx.load(excluded).graph
    producer = {t: n.op_type for n in graph.node for t in n.output}
    conv2 = next(n for n in graph.node if n.name == "conv2")
    assert producer[conv2.input[0]] == "Mul" and conv2.input[1] not in producer  # float weights, no DQ feeding it
    assert error(excluded) == pytest.approx(error(expected), rel=0.05)  # what the ranking expected
    assert error(excluded) < error(qdq) / 10  # conv2's harm is gone
    assert holdfp32.hold_in_fp32(excluded, ["conv2"]) == []  # quantize_model left nothing to change
    # conv2's own output, fed the INT8 model's conv2 input, is the FP32 convolution of that input
    inp, out = conv2.input[0], conv2.output[0]
    probe = onnx.load(excluded)
    probe.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in (inp, out)])
    x, y = create_session(probe.SerializeToString()).run([inp, out], {"x": data.feeds["x"][:4]})
    w2 = numpy_helper.to_array(next(t for t in onnx.load(fp32).graph.initializer if t.name == "w2"))
    conv = helper.make_graph([helper.make_node("Conv", ["a", "w"], ["b"], pads=[1, 1, 1, 1])], "conv",
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(w2, "w")])
    fp32_conv = create_session(helper.make_model(conv, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert np.allclose(y, fp32_conv.run(None, {"a": x})[0], rtol=1e-4, atol=1e-4 * np.abs(y).max())


def test_the_ranking_puts_the_harmful_node_first(outlier):
    fp32, pre, qdq = outlier
    ranking = sensitivity.rank_fallbacks(pre, _data(16, 3), qdq_path=qdq)
    assert ranking.fallbacks[0].nodes == ("conv2",)
    gains = {f.nodes: f.gain for f in ranking.fallbacks}
    assert gains[("conv2",)] > 10 * max(g for n, g in gains.items() if "conv2" not in n)
    assert abs(sum(ranking.shares.values()) - 1) < 1e-9 and ranking.error > 0
    assert [f.ratio for f in ranking.fallbacks] == sorted((f.ratio for f in ranking.fallbacks), reverse=True)
    worst, db = guard.sensitive_nodes(pre, qdq, _data(16, 3))[0]
    assert worst == "conv2" and np.isfinite(db)
    # the depth of a node does not make it look bad: conv3 (deeper) removes far less error than conv2
    assert gains[("conv3",)] < gains[("conv2",)] / 10


def test_dynamic_ranking_finds_the_outlier_matmul(tmp_path):
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((16, 16)).astype(np.float32) / 4 for _ in range(3)]
    w[1][3, 5] = 500.0  # per-tensor int8: every other weight of mm1 rounds to zero
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"m{i}"], f"mm{i}") for i in range(3)]
    nodes += [helper.make_node("Tanh", [f"m{i}"], [f"h{i}" if i < 2 else "y"], f"tanh{i}") for i in range(3)]
    nodes = [nodes[0], nodes[3], nodes[1], nodes[4], nodes[2], nodes[5]]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(w)])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    data = Dataset("random", {"x": rng.standard_normal((32, 16)).astype(np.float32)})
    ranking = guard.matmul_sensitivity(path, data, per_channel=False)
    assert ranking[0][0] == "mm1" and {n for n, _ in ranking} == {"mm0", "mm1", "mm2"}
    # per output column the outlier only spoils its own column: mm1 is no longer far worse than the rest
    per_channel = dict(guard.matmul_sensitivity(path, data, per_channel=True))
    assert per_channel["mm1"] > dict(ranking)["mm1"] + 10


def test_improves_is_the_budget_measure_then_the_cosine():
    def fid(agree, cos):
        return Fidelity(100, cos, agree)

    assert measure.improves(fid(0.95, 0.99), fid(0.97, 0.98))  # fewer top-1 flips win
    assert not measure.improves(fid(0.97, 0.98), fid(0.95, 0.999))
    assert measure.improves(fid(0.97, 0.98), fid(0.97, 0.99)) and not measure.improves(fid(0.97, 0.98), fid(0.97, 0.98))


def test_every_kept_step_improves_fidelity_and_undone_tries_are_recorded(outlier, tmp_path):
    fp32, _, _ = outlier
    ranked = []
    result, steps = guard.guard_accuracy(fp32, tmp_path / "g.onnx", PER_TENSOR, _data(32, 1), _data(64, 4),
                                         max_accuracy_drop=0.0, min_cosine=1.0, group=1, max_steps=3, batches=(1, 2),
                                         runs=3, threads=1, ranked=ranked)
    assert ranked and steps[1].added == ["conv2"]  # the harmful node is the first fallback tried
    assert steps[1].kept and measure.shortfall(steps[1].fidelity) < measure.shortfall(steps[0].fidelity)
    assert steps[1].gain > 0 and steps[1].estimated_gain > 0
    kept_so_far, kept_step = [], steps[0]
    for step in steps[1:]:
        assert step.excluded == kept_so_far + step.added  # each try starts from the steps kept before it
        # keep or undo is decided on the selection set (here the calibration set), not on the reported one
        assert step.selection_before == kept_step.selection_fidelity and step.fidelity_before == kept_step.fidelity
        assert step.kept == measure.improves(step.selection_before, step.selection_fidelity)
        assert set(step.ms_lost) == set(step.estimated_ms_lost) == {1, 2}
        assert all(np.isfinite(v) for v in step.ms_lost.values())
        if step.kept:
            kept_so_far, kept_step = step.excluded, step
    fidelities = [steps[0].selection_fidelity] + [s.selection_fidelity for s in steps[1:] if s.kept]
    assert all(measure.improves(a, b) for a, b in zip(fidelities, fidelities[1:], strict=False))
    assert result is None or steps[-1].kept


def test_the_guard_selects_on_calibration_data_and_reports_on_the_evaluation_set(outlier, tmp_path, monkeypatch):
    """Keep or undo is decided on data that is not the evaluation set whose fidelity is reported (else the
    reported fidelity is fitted to it): the calibration set; every fidelity reported is the evaluation set's."""
    fp32, _, _ = outlier
    calib, held = _data(32, 1), _data(64, 4)
    timed, judged = [], []

    def spy_speed(paths, evaluation, **kw):
        timed.append(evaluation.sha256)
        return measure.speed_and_fidelity(paths, evaluation, **kw)

    def spy_outputs(path, data, **kw):
        judged.append(data.sha256)
        return measure.outputs_of(path, data, **kw)

    monkeypatch.setattr(guard, "speed_and_fidelity", spy_speed)
    monkeypatch.setattr(guard, "outputs_of", spy_outputs)
    selected = {}
    _, steps = guard.guard_accuracy(fp32, tmp_path / "g.onnx", PER_TENSOR, calib, held, max_accuracy_drop=0.0,
                                    min_cosine=1.0, group=1, max_steps=2, batches=(1,), runs=3, threads=1,
                                    selected=selected)
    assert selected == {"data": "calibration", "source": "random-1", "samples": 32, "split": False,
                        "evaluation_samples": 64, "biased": False}
    assert len(steps) >= 2 and set(timed) == {held.sha256} and set(judged) == {calib.sha256}
    assert steps[0].fp32_fidelity.samples == 64 and all(s.fidelity.samples == 64 for s in steps)
    assert all(s.selection_fidelity.samples == 32 for s in steps)
    # the plain INT8 model again: its reported fidelity is the evaluation set's, its selection one calibration's
    plain = static.quantize_model(fp32, tmp_path / "plain.onnx", PER_TENSOR, calib).path
    for data, fid in ((held, steps[0].fidelity), (calib, steps[0].selection_fidelity)):
        got = fidelity(run_outputs(create_session(fp32), data), run_outputs(create_session(plain), data), None, True)
        assert got.cosine == pytest.approx(fid.cosine, abs=1e-6) and got.agreement == fid.agreement


def test_without_calibration_data_the_evaluation_set_is_split():
    held = _data(10, 4)
    selection, reported, info = guard.selection_sets(None, held)
    assert len(selection) == 5 and len(reported) == 5 and info["split"] and not info["biased"]
    assert np.array_equal(np.concatenate([selection.feeds["x"], reported.feeds["x"]]), held.feeds["x"])
    assert info["data"] == "evaluation" and info["evaluation_samples"] == 5
    # calibration data that is the evaluation data is no separate selection set
    assert guard.selection_sets(held.take(0, None), held)[2]["split"]
    assert guard.selection_sets(_data(8, 1), held)[2] == {"data": "calibration", "source": "random-1", "samples": 8,
                                                          "split": False, "evaluation_samples": 10, "biased": False}
    one = _data(1, 4)
    assert guard.selection_sets(None, one)[2]["biased"]


def test_the_report_shows_each_fallback_and_its_cost(tmp_path):
    fp32 = _outlier_net(tmp_path / "embedder.onnx", classifier=False)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=_data(32, 1).feeds["x"])
    held = tmp_path / "eval.npz"
    np.savez(held, x=_data(64, 4).feeds["x"])
    args = ["quantize", fp32, "--calib", str(calib), "--eval", str(held), "--per-tensor", "--batch-sizes", "1,2",
            "--runs", "3", "--min-cosine", "1", "-o", str(tmp_path / "q.onnx")]
    run = CliRunner().invoke(main, [*args, "--json"])
    assert run.exit_code in (0, 2), run.output
    report = json.loads(run.stdout)
    assert report["guard_selection"]["data"] == "calibration" and report["guard_selection"]["samples"] == 32
    assert report["evaluation"]["samples"] == report["guard_selection"]["evaluation_samples"] == 64
    assert any("chose its FP32 fallbacks on the 32 calibration samples" in note for note in report["notes"])
    entries = report["guard"]
    assert [e["step"] for e in entries] == list(range(len(entries))) and len(entries) > 1
    first = entries[1]
    assert first["added"][0] == "conv2" and len(first["added"]) == 2  # the command tries two units a step
    assert first["added_modules"] == [None, None]  # no node map in a hand-made graph
    for e in entries[1:]:
        assert set(e["ms_lost"]) == set(e["estimated_ms_lost"]) == {"1", "2"}
        assert e["gain"] == pytest.approx(e["shortfall_before"] - e["shortfall"])
        assert e["fidelity_before"]["cosine"] <= 1 and isinstance(e["kept"], bool)
        assert e["selection_fidelity"]["samples"] == 32 and e["fidelity"]["samples"] == 64
    assert entries[0]["added"] == [] and entries[0]["gain"] is None and entries[0]["kept"]
    assert report["sensitivity"]["units"][0]["nodes"] == ["conv2"] and report["sensitivity"]["simulated_error"] > 0
    labels = [r["label"] for r in report["rows"]]
    assert all(("undone" in label) == (not e["kept"]) for label, e in zip(labels[1:], entries, strict=True))
    # a budget the first kept fallback meets: the command writes the model and prints the guard's table
    kept = [e for e in entries[1:] if e["kept"]]
    assert kept, entries
    budget = 1 - (entries[0]["shortfall"] + kept[0]["shortfall"]) / 2
    args[args.index("--min-cosine") + 1] = f"{budget:.8f}"
    table = CliRunner().invoke(main, args + ["-f"])
    assert table.exit_code == 0, table.output
    text = " ".join(table.output.split())
    assert "accuracy guard" in text and "conv2" in text and "kept" in text


def test_fallbacks_name_their_pytorch_modules(mnist_cnn, tmp_path, monkeypatch):
    """A real exported model: the nodes added resolve to the modules they came from."""
    from toolchain.quantize import QuantizeJob, run_quantize

    _, result = mnist_cnn
    monkeypatch.setattr(guard, "within_budget", lambda fid, a, b: (False, "forced"))
    with pytest.raises(Exception) as caught:
        run_quantize(QuantizeJob(model=result.path, output=str(tmp_path / "m.onnx"), calib_data="builtin:mnist",
                                 calib_samples=32, eval_samples=64, batch_sizes=(1,), runs=3))
    report = caught.value.report
    tried = [e for e in report["guard"][1:]]
    assert tried and all(len(e["added_modules"]) == len(e["added"]) for e in tried)
    assert any(m for e in tried for m in e["added_modules"])
