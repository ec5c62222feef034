"""Post-training quantization remedies on tiny hand-built ONNX graphs: cross-layer equalization,
empirical bias correction and AdaRound (toolchain.quantize.equalize / biascorrect / adaround)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.data.dataset import Dataset
from toolchain.quantize.adaround import adaround, learn_rounding
from toolchain.quantize.biascorrect import correct_bias
from toolchain.quantize.equalize import equalize
from toolchain.quantize.layerstats import session


def _model(nodes, inits, out="y") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", None, None, None])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model, x, outputs=None):
    return session(model.SerializeToString(), optimize=False).run(outputs, {"x": x})


def _pair(act: str, depthwise: bool, rng) -> onnx.ModelProto:
    """conv1 (4 -> 6, 3x3) -> act -> conv2 (1x1 6 -> 5, or depthwise 3x3 on 6), channel ranges 1000x apart."""
    w1 = rng.standard_normal((6, 4, 3, 3)) * np.array([100, 0.1, 1, 10, 0.5, 3]).reshape(-1, 1, 1, 1)
    w2 = rng.standard_normal((6, 1, 3, 3) if depthwise else (5, 6, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1])]
    inits = {"w1": w1, "b1": rng.standard_normal(6), "w2": w2, "b2": rng.standard_normal(w2.shape[0])}
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["h"], ["a"]))
    else:
        nodes.append(helper.make_node("Clip", ["h", "lo", "hi"], ["a"]))
        inits.update(lo=np.array(0.0), hi=np.array(6.0))
    nodes.append(helper.make_node("Conv", ["a", "w2", "b2"], ["y"], group=6 if depthwise else 1,
                                  pads=[1, 1, 1, 1] if depthwise else [0, 0, 0, 0]))
    return _model(nodes, inits)


def _ranges(model):
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    r1 = np.abs(w["w1"]).reshape(6, -1).max(1)
    r2 = np.abs(w["w2"]).reshape(6, -1).max(1) if w["w2"].shape[0] == 6 and w["w2"].shape[1] == 1 \
        else np.abs(w["w2"]).max(axis=(0, 2, 3))
    return r1, r2


@pytest.mark.parametrize("depthwise", [False, True])
def test_equalize_keeps_relu_function_and_equalizes_ranges(depthwise):
    rng = np.random.default_rng(0)
    model = _pair("relu", depthwise, rng)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    eq, info = equalize(model, check={"x": x})
    assert info["pairs"] == 1 and info["clips_replaced"] == 0
    before, after = _run(model, x)[0], _run(eq, x)[0]
    assert np.max(np.abs(after - before)) <= 1e-4 * np.max(np.abs(before))
    assert info["fp32_rel_change"] < 1e-5 and info["fp32_top1_agreement"] == 1.0
    r1, r2 = _ranges(eq)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)  # s = sqrt(r1 / r2): both become sqrt(r1 r2)
    r1_0, _ = _ranges(model)
    assert r1_0.max() / r1_0.min() > 100 > r1.max() / r1.min()
    assert info["range_spread_after"] < info["range_spread_before"]


def test_equalize_relu6_is_skipped_or_replaced_and_reported():
    rng = np.random.default_rng(1)
    model = _pair("relu6", False, rng)
    x = (3 * rng.standard_normal((4, 4, 8, 8))).astype(np.float32)  # pre-activations well beyond 6
    same, info = equalize(model, relu6="skip", check={"x": x})
    assert info["pairs"] == 0 and info["skipped_relu6"] == 1 and info["fp32_max_abs_change"] == 0.0
    changed, info = equalize(model, relu6="relu", check={"x": x})
    assert info["pairs"] == 1 and info["clips_replaced"] == 1
    assert [n.op_type for n in changed.graph.node] == ["Conv", "Relu", "Conv"]
    diff = np.max(np.abs(_run(changed, x)[0] - _run(model, x)[0]))
    assert diff > 0 and info["fp32_max_abs_change"] == pytest.approx(diff, rel=1e-3)


def _quantized(model, calib: Dataset, float_bias: bool):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from toolchain.quantize import compact_qdq

    class Reader:
        def __init__(self):
            self.it = calib.batches(8)

        def get_next(self):
            return next(self.it, None)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "fp.onnx", Path(d) / "q.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"WeightSymmetric": True})
        q = onnx.load(dst)
    if float_bias:
        compact_qdq(q, model)
    return q


def _depthwise(rng, bias=True):
    w = rng.standard_normal((4, 1, 3, 3)) * np.array([1.0, 0.01, 3.0, 0.3]).reshape(-1, 1, 1, 1)
    w[:, 0, 0, 0] *= 20  # one large weight a channel: the other eight round coarsely
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    inits = {"w": w, "b": rng.standard_normal(4)} if bias else {"w": w}
    return _model([helper.make_node("Conv", inputs, ["y"], group=4, pads=[1, 1, 1, 1])], inits)


def _positive(rng, n):
    return Dataset("test", {"x": (rng.random((n, 4, 8, 8)) * 2 + 1).astype(np.float32)})


@pytest.mark.parametrize("float_bias", [False, True])
def test_bias_correction_reduces_mean_output_error(float_bias):
    rng = np.random.default_rng(2)
    model = _depthwise(rng)
    calib, held = _positive(rng, 32), _positive(rng, 32)
    q = _quantized(model, calib, float_bias)
    corrected, info = correct_bias(model, q, calib)
    assert info["layers"] == 1

    def mean_error(m):
        # the Conv output before QuantizeLinear: y in the FP32 model, the Conv's own output in the QDQ one
        conv = next(n for n in m.graph.node if n.op_type == "Conv")
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        m2.graph.output.append(helper.make_empty_tensor_value_info(conv.output[0]))
        out = _run(m2, held.feeds["x"], [conv.output[0]])[0] - _run(model, held.feeds["x"])[0]
        return float(np.mean(np.abs(out.mean(axis=(0, 2, 3)))))

    before, after = mean_error(q), mean_error(corrected)
    assert before > 1e-4
    assert after < 0.5 * before


def _objective(fp32, qdq, data: Dataset) -> float:
    """E[(conv(x_q, w~) - conv(x_q, w))^2] with x_q the QDQ model's dequantized input, w~ its weights, w
    the FP32 ones: AdaRound's (local) objective, computed by ORT on a rewired copy of the QDQ model."""
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    m.graph.output.append(helper.make_empty_tensor_value_info(conv.output[0]))
    yq = _run(m, data.feeds["x"], [conv.output[0]])[0]
    m.graph.initializer.append(next(t for t in fp32.graph.initializer if t.name == "w"))
    conv.input[1] = "w"
    yf = _run(m, data.feeds["x"], [conv.output[0]])[0]
    return float(np.mean((yq - yf) ** 2))


def test_adaround_is_never_worse_than_nearest_on_its_objective():
    rng = np.random.default_rng(3)
    model = _depthwise(rng, bias=False)
    calib = _positive(rng, 16)  # 16 x 64 positions: every row enters the second moments
    q = _quantized(model, calib, float_bias=False)
    learned, info = adaround(model, q, calib, worst=None, iterations=400)
    layer = next(iter(info["layers"].values()))
    nearest_obj, learned_obj = _objective(model, q, calib), _objective(model, learned, calib)
    assert learned_obj <= nearest_obj * (1 + 1e-6)
    assert learned_obj < 0.98 * nearest_obj  # and it learns something
    assert layer["error_learned"] <= layer["error_nearest"]
    assert layer["error_learned"] / layer["error_nearest"] == pytest.approx(learned_obj / nearest_obj, rel=0.02)
    w_old = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name.endswith("_quantized")))
    w_new = numpy_helper.to_array(next(t for t in learned.graph.initializer if t.name.endswith("_quantized")))
    assert w_new.dtype == np.int8 and np.abs(w_new.astype(int) - w_old).max() <= 1
    scales = [t.name for t in q.graph.initializer if "scale" in t.name]
    assert scales == [t.name for t in learned.graph.initializer if "scale" in t.name]


def test_learn_rounding_rounds_up_or_down_only():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((2, 3, 10))
    x = rng.standard_normal((500, 10)) @ rng.standard_normal((10, 10))
    gram = np.broadcast_to(x.T @ x / len(x), (2, 10, 10)).copy()
    scale = np.abs(w).max(-1) / 127
    ints = learn_rounding(w, scale, gram, gram, iterations=200)
    floor = np.floor(w / scale[..., None])
    assert set(np.unique(ints - floor)) <= {0.0, 1.0}


def test_quantize_applies_the_remedies_asked_for_and_records_them(tiny_resnet, tmp_path):
    import json

    from toolchain.core.errors import ToolchainError
    from toolchain.core.onnxfile import model_metadata
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.quantize import QUANT_KEY, quantize_model
    from toolchain.runtime.session import create_session
    from toolchain.targets.presets import QuantConfig

    _, result = tiny_resnet
    calib = load_dataset("random", result.path, DataOptions(samples=16))
    config = QuantConfig(adaround=True, bias_correction=True)
    assert config.label.endswith("adaround bias-corrected")
    plain = quantize_model(result.path, tmp_path / "plain.onnx", QuantConfig(), calib)
    fixed = quantize_model(result.path, tmp_path / "fixed.onnx", config, calib)
    record = json.loads(model_metadata(fixed.path)[QUANT_KEY])
    assert record["label"] == config.label and record["remedies"]["fitted_on"]["samples"] == 16
    assert {"adaround", "bias_correction"} <= set(record["remedies"])
    feeds = {k: v[:4] for k, v in calib.feeds.items()}
    a = create_session(plain.path).run(None, feeds)[0]
    b = create_session(fixed.path).run(None, feeds)[0]
    assert a.shape == b.shape and not np.allclose(a, b)  # the weights or biases did change
    with pytest.raises(ToolchainError, match="static QDQ"):
        quantize_model(result.path, tmp_path / "dyn.onnx", QuantConfig(mode="dynamic", bias_correction=True), calib)
