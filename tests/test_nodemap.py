"""The node-to-module map on real ORT-optimized FP32 and QDQ graphs."""

from __future__ import annotations

import onnx
import pytest

from toolchain.formats.nodemap import (
    COMPUTE_OPS,
    NodeModuleMap,
    OptimizedGraph,
    name_variants,
    scope_to_module,
)
from toolchain.model.forward import make_inputs
from toolchain.profile.trace import profile_nodes


def test_variants_strip_ort_suffixes():
    assert name_variants("relu_3_nchwc")[-1] == "relu_3"
    assert name_variants("node_Conv_97_token_12")[-1] == "node_Conv_97"
    assert "onnx::Conv_73" in name_variants("onnx::Conv_73_DequantizeLinear/duplicated")
    assert "node_MatMul_127" in name_variants("node_MatMul_127/MatMulScaleFusion/")
    assert name_variants("plain") == ["plain"]


def test_torchscript_scope_components_hang_off_ancestors():
    modules = {m: "" for m in ("model", "model.stages", "model.stages.0", "model.stages.0.layers",
                               "model.stages.0.layers.0", "model.stages.0.layers.0.layer",
                               "model.stages.0.layers.0.layer.0", "model.stages.0.layers.0.layer.0.conv")}
    parts = ["model", "stages.0", "layers.0", "layer", "layer.0", "conv"]
    assert scope_to_module(parts, modules, "") == "model.stages.0.layers.0.layer.0.conv"


def _quantize(path, loaded, out):
    """QDQ U8S8 per-channel on every op ORT can quantize (no transformer fusions), on random inputs."""
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.quantize import quantize_model
    from toolchain.targets.presets import QuantConfig

    data = load_dataset("random", path, DataOptions(samples=3, seq_len=16))
    return quantize_model(path, out, QuantConfig(), data, fuse=False).path


def _exported_or_quantized(exported, precision, tmp_path):
    loaded, result = exported
    return loaded, result.path if precision == "fp32" else _quantize(result.path, loaded, tmp_path / "q.onnx")


def _profile_and_resolve(path, loaded, tmp_path):
    node_map = NodeModuleMap.from_model(onnx.load(str(path), load_external_data=False))
    assert node_map is not None, "the map must travel with the model"
    feeds = {k: v.numpy() for k, v in make_inputs(loaded, batch=1, seq_len=32 if loaded.is_text else None).items()}
    profile = profile_nodes(path, feeds, runs=3, workdir=tmp_path)
    graph = OptimizedGraph.from_model(onnx.load(str(profile.optimized_model)))
    rows = [(n, node_map.resolve(n.name, n.op_type, graph)) for n in profile.nodes]
    resolved_us = sum(n.total_us for n, r in rows if r is not None)
    return node_map, rows, resolved_us / profile.total_us


@pytest.mark.parametrize("precision", ["fp32", "qdq"])
def test_resnet_profiled_nodes_resolve_to_conv_modules(tiny_resnet, precision, tmp_path):
    loaded, path = _exported_or_quantized(tiny_resnet, precision, tmp_path)
    node_map, rows, share = _profile_and_resolve(path, loaded, tmp_path)
    assert share >= 0.99
    convs = [(n, r) for n, r in rows if n.op_type in COMPUTE_OPS and "Conv" in n.op_type]
    assert len(convs) >= 8  # 1 stem + 8 block convs + 3 shortcuts in tiny-resnet, some fused
    for n, r in convs:
        # a folded Conv+BatchNorm, a Conv fused with its ReLU: always the Conv2d module itself
        assert node_map.modules[r.module].endswith("Conv2d"), (n.name, r)
    stem = [r.module for n, r in convs if r.module == "resnet.embedder.embedder.convolution"]
    assert stem, "the stem convolution is found"


@pytest.mark.parametrize("precision", ["fp32", "qdq"])
def test_bert_profiled_nodes_resolve(tiny_bert, precision, tmp_path):
    loaded, path = _exported_or_quantized(tiny_bert, precision, tmp_path)
    node_map, rows, share = _profile_and_resolve(path, loaded, tmp_path)
    assert share >= 0.99
    modules = {r.module for _, r in rows if r is not None}
    for layer in (0, 1):
        assert f"encoder.layer.{layer}.intermediate.dense" in modules
        assert f"encoder.layer.{layer}.output.dense" in modules
    for n, r in rows:
        if n.op_type in ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat") and r:
            assert r.module.startswith("encoder.layer."), (n.name, r)


def test_minilm_optimized_graph_is_covered(minilm, tmp_path):
    loaded, result = minilm
    _, rows, share = _profile_and_resolve(result.path, loaded, tmp_path)
    assert share >= 0.99
    assert len({r.module for _, r in rows if r}) > 30


def test_map_roundtrip_and_lookup(tiny_resnet):
    _, result = tiny_resnet
    model = onnx.load(result.path)
    node_map = NodeModuleMap.from_model(model)
    again = NodeModuleMap.from_json(node_map.to_json())
    assert again.nodes == node_map.nodes and again.modules == node_map.modules
    assert all(node_map.module_of(n.name) is not None for n in model.graph.node)
    assert node_map.resolve("no_such_node_anywhere") is None


def test_map_survives_qdq_quantization(tiny_resnet, tmp_path):
    loaded, result = tiny_resnet
    q = _quantize(result.path, loaded, tmp_path / "q.onnx")
    original = NodeModuleMap.from_model(onnx.load(result.path))
    carried = NodeModuleMap.from_model(onnx.load(str(q)))
    assert carried.nodes == original.nodes
    qmodel = onnx.load(str(q))
    dq = [n.name for n in qmodel.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(carried.resolve(name) is not None for name in dq)


def test_cli_inspect_resolves_profiled_names(tiny_resnet):
    import json

    from click.testing import CliRunner

    from toolchain.cli import main
    from toolchain.export.describe import cpu_optimized_graph

    _, result = tiny_resnet
    graph = cpu_optimized_graph(result.path)
    fused = next(n for n, v in graph.nodes.items() if n.endswith("_nchwc") and v["op"] == "Conv")
    out = CliRunner().invoke(main, ["inspect", result.path, "--resolve", f"{fused}@Conv", "--resolve", "nonsense", "--json"])
    assert out.exit_code == 0, out.output
    resolved = json.loads(out.output)["resolved"]
    modules = NodeModuleMap.from_model(onnx.load(result.path)).modules
    assert modules[resolved[0]["module"]].endswith("Conv2d")
    assert resolved[1]["module"] is None
