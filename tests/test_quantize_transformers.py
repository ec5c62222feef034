"""Transformers INT8: eager-attention export that ORT's optimizer fuses (Attention, SkipLayerNormalization),
and the outlier transforms (SmoothQuant, FP32 outlier channels) that must keep the FP32 function."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.core.onnxfile import model_metadata
from toolchain.data.dataset import DataOptions, Dataset
from toolchain.data.load import load_dataset
from toolchain.export.exporter import ExportOptions, export_model
from toolchain.model.load import load_model
from toolchain.quantize import quantize_model
from toolchain.quantize.outliers import split_outliers
from toolchain.quantize.smooth import smooth_model
from toolchain.runtime.session import create_session
from toolchain.targets.presets import QuantConfig


def ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def run(model, data: Dataset) -> np.ndarray:
    session = create_session(model.SerializeToString(), ["cpu"], threads=1)
    return np.concatenate([session.run(None, b)[0] for b in data.batches(8)])


@pytest.fixture(scope="module")
def eager_bert(tmp_path_factory):
    """tiny-bert exported the default way, and the fused FP32 graph quantize_model works on."""
    loaded = load_model("tiny-bert")
    tmp = tmp_path_factory.mktemp("eager-bert")
    result = export_model(loaded, tmp / "bert.onnx")
    fused = tmp / "fused.onnx"
    quantize_model(result.path, tmp / "plain.int8.onnx", QuantConfig(mode="dynamic"), keep_preprocessed=fused)
    data = load_dataset("random", result.path, DataOptions(samples=24, seq_len=32))
    return loaded, result, fused, data


def test_the_default_export_of_a_bert_model_is_torchscript_with_eager_attention(eager_bert):
    loaded, result, _, _ = eager_bert
    assert result.exporter == "torchscript"
    assert json.loads(model_metadata(result.path)["toolchain.attention"]) == {
        "implementation": "eager", "num_heads": 4, "hidden_size": 64}
    assert loaded.module.config._attn_implementation == "sdpa"  # restored after the export
    assert all(p.passed for p in result.parity)


def test_eager_export_fuses_attention_and_quantizes_it(eager_bert, tmp_path):
    _, result, fused, _ = eager_bert
    counts = ops(onnx.load(str(fused)))
    # 2 layers: one Attention each, two SkipLayerNormalization each, BiasGelu in each feed-forward block
    assert counts["Attention"] == 2 and counts["SkipLayerNormalization"] == 4 and counts["BiasGelu"] == 2
    assert counts["Softmax"] == 0  # no attention left unfused
    out = quantize_model(result.path, tmp_path / "q.onnx", QuantConfig(mode="dynamic"))
    assert ops(onnx.load(out.path))["QAttention"] == 2


def test_dynamo_export_without_eager_attention_is_not_fused(tmp_path):
    """Why ``auto`` picks TorchScript: the dynamo graph of the same model gets no Attention node."""
    result = export_model(load_model("tiny-bert"), tmp_path / "d.onnx", ExportOptions(exporter="dynamo"))
    fused = tmp_path / "fused.onnx"
    quantize_model(result.path, tmp_path / "q.onnx", QuantConfig(mode="dynamic"), keep_preprocessed=fused)
    counts = ops(onnx.load(str(fused)))
    assert counts["SkipLayerNormalization"] == 4 and counts["Attention"] == 0


def test_smoothquant_keeps_the_function_of_a_fused_bert(eager_bert):
    _, _, fused, data = eager_bert
    model = onnx.load(str(fused))
    before = run(model, data)
    weights = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    result = smooth_model(model, data.take(0, 16), alpha=0.5)
    # post-LN BERT: each layer norm output is also the residual, so 1/s goes into Mul nodes
    assert len(result.nodes) == 4 and result.inserted == 4 and result.folded == 0  # 2 Attention + 2 FFN1
    changed = [t.name for t in model.graph.initializer
               if t.name in weights and not np.array_equal(numpy_helper.to_array(t), weights[t.name])]
    assert len(changed) >= 4
    onnx.checker.check_model(model)
    after = run(model, data)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * float(np.abs(before).max()))


def _pre_ln_graph(rng) -> onnx.ModelProto:
    """x -> LayerNormalization -> MatMul (its only reader): the pre-LN pattern, where 1/s folds into gamma."""
    gamma, beta = rng.uniform(0.5, 2, 16).astype(np.float32), rng.normal(0, 0.1, 16).astype(np.float32)
    weight = rng.normal(0, 0.2, (16, 8)).astype(np.float32)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "pre_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(a, n) for a, n in ((gamma, "gamma"), (beta, "beta"), (weight, "w"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_smoothquant_folds_into_the_layer_norm_of_a_pre_ln_block():
    rng = np.random.default_rng(0)
    model = _pre_ln_graph(rng)
    x = rng.normal(0, 1, (64, 16)).astype(np.float32)
    data = Dataset("test", {"x": x})
    before = run(model, data)
    result = smooth_model(model, data, alpha=0.5)
    assert result.nodes == ["mm"] and result.folded == 1 and result.inserted == 0
    assert ops(model) == {"LayerNormalization": 1, "MatMul": 1}  # nothing inserted
    np.testing.assert_allclose(run(model, data), before, rtol=1e-5, atol=1e-5)


def test_outlier_channels_split_into_fp32_keep_the_function():
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.2, (32, 8)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(0, 1, (64, 32)).astype(np.float32)
    x[:, 5] *= 40  # one channel far above the others
    data = Dataset("test", {"x": x})
    before = run(model, data)
    result = split_outliers(model, data, ratio=6.0)
    assert result.channels == {"mm": [5]} and result.fp32_nodes == ["mm_outlier_matmul"]
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(model, data), before, rtol=1e-5, atol=1e-4)


def test_dynamic_quantization_with_calibration_migrates_outliers(eager_bert, tmp_path):
    _, result, _, data = eager_bert
    calib = data.take(0, 16)
    out = quantize_model(result.path, tmp_path / "q.onnx", QuantConfig(mode="dynamic"), calib)
    assert out.transforms is not None and out.transforms["smoothquant"]["nodes"] == 4
    stamp = json.loads(model_metadata(out.path)["toolchain.quantization"])
    assert stamp["transforms"]["smoothquant"]["alpha"] == 0.5 and stamp["calibration"]["samples"] == 16
    int8 = onnx.load(out.path)
    fp32_matmuls = {n.name for n in int8.graph.node if n.op_type == "MatMul"}
    assert set(out.transforms["fp32_nodes"]) <= fp32_matmuls  # outlier MatMuls were left in FP32
    plain = quantize_model(result.path, tmp_path / "p.onnx", QuantConfig(mode="dynamic"), calib, smooth=False)
    assert plain.transforms is None and plain.calibration is None
