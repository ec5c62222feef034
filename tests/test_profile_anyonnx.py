"""Any ONNX file profiles: per ONNX node without the export's node-to-module map (onnx.helper graphs, a
plain ``torch.onnx.export``), compare lines such columns up by node name; and kernels an execution
provider compiled from a subgraph (OpenVINO's, recorded; and live in .venv-openvino when it exists)
are one row each, saying so."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from toolchain.cli import main
from toolchain.formats.costs import CostTable
from toolchain.profile.attribution import attribute
from toolchain.profile.fused import FusedSubgraph, covered_nodes, fused_by
from toolchain.profile.trace import NodeProfile, parse_trace
from toolchain.report.charts import table_notes, table_rows

FAST = ["--repeats", "2", "--window", "0.1", "--idle", "0", "--profile-runs", "3", "--warmup", "1"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torch_plain(tmp_path_factory):
    """A small CNN exported with plain ``torch.onnx.export`` (TorchScript exporter): no toolchain metadata."""
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("torch-plain") / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    assert not any(p.key.startswith("toolchain.") for p in onnx.load(str(path)).metadata_props)
    return path


def test_a_plain_torch_export_profiles_per_onnx_node(torch_plain, tmp_path):
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["profile", str(torch_plain), "--meter", "estimate", *FAST, "-o", str(out)])
    assert r.exit_code == 0, r.output
    table = CostTable.load(out)
    nodes = {n.name: n.op_type for n in onnx.load(str(torch_plain)).graph.node}
    assert table.granularity == "onnx-node" and table.profile["granularity"] == "onnx-node"
    named = [row for row in table.rows if row.module != "(unmapped)"]
    assert named and all(row.module in nodes and row.module_type == nodes[row.module] for row in named)
    conv = next(row for row in table.rows if row.module_type == "Conv")
    assert conv.macs == 8 * 16 * 16 * 3 * 3 * 3 and conv.output_shapes == [[1, 8, 16, 16]]
    assert sum(row.share for row in table.rows) == pytest.approx(1.0)
    header, _ = table_rows(table)
    assert header[0] == "ONNX node" and any("per ONNX node" in n for n in table_notes(table))


def test_compare_lines_unmapped_columns_up_by_node_name(torch_plain, tmp_path):
    twin = tmp_path / "twin.onnx"
    shutil.copy(torch_plain, twin)
    r = CliRunner().invoke(main, ["compare", str(torch_plain), str(twin), "--meter", "estimate", *FAST, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [c["granularity"] for c in data["columns"]] == ["onnx-node", "onnx-node"]
    assert data["layer_alignment"].startswith("by ONNX node name")
    deltas = data["layer_deltas"]
    assert deltas and all(next(iter(d["columns"].values())) is not None for d in deltas)  # same graph: every row


def test_compare_a_mapped_model_with_its_unmapped_copy(mnist_cnn, tmp_path):
    """Module rows (which list their ONNX nodes) and node rows join where they share nodes."""
    from toolchain.formats.nodemap import MAP_KEY

    _, result = mnist_cnn
    model = onnx.load(result.path)
    keep = [p for p in model.metadata_props if p.key != MAP_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    r = CliRunner().invoke(main, ["compare", str(result.path), str(stripped), "--meter", "estimate", *FAST, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [c["granularity"] for c in data["columns"]] == ["module", "onnx-node"]
    matched = [d for d in data["layer_deltas"] if next(iter(d["columns"].values())) is not None]
    assert len(matched) >= len(data["layer_deltas"]) - 1 and "ONNX node" in data["layer_alignment"]


def test_corrupt_files_are_one_line_errors(tmp_path, torch_plain):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a model at all")
    for args in (["profile", str(bad), "--meter", "estimate", *FAST, "-o", str(tmp_path / "o")],
                 ["compare", str(torch_plain), str(bad), "--meter", "estimate", *FAST]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and r.output.startswith("error:") and r.output.count("\n") == 1, r.output
        assert "Traceback" not in r.output


# ------------------------------------------------------------------------------------------ fused subgraphs

def _mixed_model(path: Path) -> Path:
    """MatMul -> Relu -> MatMul -> Reshape | com.microsoft.Inverse (OpenVINO leaves it to the CPU) | Reshape ->
    MatMul: OpenVINO compiles the nodes before and after Inverse into two subgraphs."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}") for i in range(3)]
    inits += [numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "shp"),
              numpy_helper.from_array(np.array([-1, 64], np.int64), "shp2")]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="mm0"), helper.make_node("Relu", ["a"], ["b"], name="relu0"),
             helper.make_node("MatMul", ["b", "w1"], ["c"], name="mm1"), helper.make_node("Reshape", ["c", "shp"], ["b8"], name="rs"),
             helper.make_node("Inverse", ["b8"], ["c8"], name="inv", domain="com.microsoft"),
             helper.make_node("Reshape", ["c8", "shp2"], ["d"], name="rs2"), helper.make_node("MatMul", ["d", "w2"], ["y"], name="mm2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _event(name, op, provider, ts, dur, ins, outs):
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op, "provider": provider, "input_type_shape": ins, "output_type_shape": outs}}


SUB1 = "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_3_0"
SUB2 = "OpenVINOExecutionProvider_OpenVINO-EP-subgraph_4_1"


def _recorded_trace(path: Path) -> Path:
    """Two runs of the mixed model as onnxruntime-openvino 1.24's profiler recorded them (extra args dropped)."""
    events = []
    for ts, (d1, d2, d3) in ((108100, (194, 14, 51)), (108466, (76, 12, 69))):
        events += [{"cat": "Session", "name": "model_run", "ts": ts, "dur": 300},
                   _event(SUB1, "OpenVINO-EP-subgraph_3", "OpenVINOExecutionProvider", ts + 10, d1,
                          [{"float": [1, 64]}, {"float": [64, 64]}, {"float": [64, 64]}, {"int64": [3]}],
                          [{"float": [1, 8, 8]}]),
                   _event("inv", "Inverse", "CPUExecutionProvider", ts + 220, d2, [{"float": [1, 8, 8]}],
                          [{"float": [1, 8, 8]}]),
                   _event(SUB2, "OpenVINO-EP-subgraph_4", "OpenVINOExecutionProvider", ts + 240, d3,
                          [{"float": [1, 8, 8]}, {"int64": [2]}, {"float": [64, 64]}], [{"float": [1, 64]}])]
    path.write_text(json.dumps(events))
    return path


def _context_model(path: Path) -> Path:
    """The EP context model OpenVINO wrote for the mixed model (its EPContext nodes' names and boundaries)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    nodes = [helper.make_node("EPContext", ["x"], ["b8"], name=SUB1, domain="com.microsoft"),
             helper.make_node("Inverse", ["b8"], ["c8"], name="inv", domain="com.microsoft"),
             helper.make_node("EPContext", ["c8"], ["y"], name=SUB2, domain="com.microsoft")]
    onnx.save(helper.make_model(helper.make_graph(nodes, "ctx", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]),
              str(path))
    return path


@pytest.mark.parametrize("with_context", [True, False])
def test_recorded_openvino_events_give_one_row_per_fused_subgraph(tmp_path, with_context):
    model = _mixed_model(tmp_path / "mixed.onnx")
    nodes = parse_trace(_recorded_trace(tmp_path / "trace.json"))
    prof = NodeProfile(nodes, 2, None, context_model=_context_model(tmp_path / "ctx.onnx") if with_context else None)
    rows, summary = attribute(model, prof, {"x": np.ones((1, 64), np.float32)}, (1.0, 0.1))
    by = {r.module: r for r in rows}
    assert set(by) == {"OpenVINO subgraph 1", "OpenVINO subgraph 2", "inv"} and summary["granularity"] == "onnx-node"
    one, two = by["OpenVINO subgraph 1"], by["OpenVINO subgraph 2"]
    assert one.fused_by == two.fused_by == "OpenVINO" and one.module_type == "fused by OpenVINO" and not by["inv"].fused_by
    assert one.latency_ms_mean == pytest.approx((194 + 76) / 2 / 1000) and one.kernels == 1
    assert summary["fused_share"] == pytest.approx((270 + 120) / (270 + 26 + 120))
    assert one.input_shapes == [[1, 64], [64, 64], [64, 64], [3]] and one.output_shapes == [[1, 8, 8]]
    if with_context:
        assert one.onnx_nodes == ["mm0", "relu0", "mm1", "rs"] and two.onnx_nodes == ["rs2", "mm2"]
        assert one.macs == 2 * 64 * 64 and one.params == 2 * 64 * 64 + 3 and "4 ONNX nodes" in one.note
        assert [f["onnx_nodes"] for f in summary["fused"]] == [4, 2]
    else:
        assert one.onnx_nodes == [] and "not known" in one.note and summary["fused"][0]["onnx_nodes"] is None
    assert by["inv"].onnx_nodes == ["inv"] and summary["unmapped_share"] == 0.0


def test_fused_kernels_are_recognised_by_name():
    assert fused_by(SUB1, "OpenVINO-EP-subgraph_3", "OpenVINOExecutionProvider") == "OpenVINO"
    assert fused_by("TensorrtExecutionProvider_TRTKernel_graph_main_123_0_0", "TRTKernel_graph_main_123_0",
                    "TensorrtExecutionProvider") == "TensorRT"
    assert fused_by("conv1", "Conv", "CPUExecutionProvider") is None
    assert fused_by("fc", "FusedMatMul", "CPUExecutionProvider") is None  # an ORT contrib op, per-op kernel
    assert fused_by("QNN_123", "QNN_123", "QNNExecutionProvider") == "QNN"
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    assert covered_nodes(model, ["r"], FusedSubgraph("s", ("x",), ("y",))) == ["r"]
    assert covered_nodes(model, ["r"], FusedSubgraph("s", ("x",), ("renamed",))) is None  # boundary not in the graph
    assert covered_nodes(model, ["r"], FusedSubgraph("s", ("other",), ("y",))) is None  # walked past its inputs


def test_openvino_profile_live(tmp_path):
    """In .venv-openvino (onnxruntime-openvino, no torch), if it is there: the real profiler output."""
    exe = ROOT / ".venv-openvino" / "bin" / "toolchain"
    if not exe.is_file():
        pytest.skip("no .venv-openvino here")
    model = _mixed_model(tmp_path / "mixed.onnx")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([str(exe), "profile", str(model), "--target", "openvino-cpu", "--meter", "estimate", *FAST,
                        "-o", str(tmp_path / "o"), "--json"], capture_output=True, text=True, timeout=300, env=env,
                       cwd=tmp_path)
    if r.returncode != 0 and "not usable" in r.stdout + r.stderr:
        pytest.skip(f"openvino-cpu is not usable here: {(r.stdout + r.stderr).strip()[:200]}")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout)
    fused = [row for row in data["rows"] if row["fused_by"] == "OpenVINO"]
    assert fused and all(row["module_type"] == "fused by OpenVINO" for row in fused)
    assert 0 < data["profile"]["fused_share"] <= 1 and data["granularity"] == "onnx-node"
    assert sorted(n for row in fused for n in row["onnx_nodes"]) == sorted(["mm0", "relu0", "mm1", "rs", "rs2", "mm2"])
    assert any(row["module"] == "inv" and not row["fused_by"] for row in data["rows"])


def test_a_column_run_as_one_fused_kernel_is_left_out_of_the_layer_alignment():
    from toolchain.formats.costs import CostTable, LayerCost
    from toolchain.profile.deltas import alignment, layer_deltas

    def row(module, ms, fused=""):
        return LayerCost(module, "Conv", [f"/{module}/Conv"], 1, ["Conv"], ms, 0.0, 0.0, ms / 1000, 0.0, 0, 0, 0,
                         fused_by=fused)

    def table(rows):
        total = sum(r.latency_ms_mean for r in rows)
        for r in rows:
            r.share = r.latency_ms_mean / total
        return CostTable(model={}, target={"name": "t"}, meter={}, measurement={}, profile={}, rows=rows, versions={})

    cpu = table([row("a", 2.0), row("b", 1.0)])
    cpu_int8 = table([row("a", 1.0), row("b", 0.5)])
    openvino = table([LayerCost("OpenVINO subgraph 1", "fused by OpenVINO", ["/a/Conv", "/b/Conv"], 1, ["Conv"],
                                2.5, 0.0, 1.0, 0.0025, 0.0, 0, 0, 0, fused_by="OpenVINO")])
    tables = {("m.onnx", "x86-cpu"): cpu, ("m.int8.onnx", "x86-cpu"): cpu_int8, ("m.onnx", "openvino-cpu"): openvino}
    deltas = layer_deltas(tables)
    assert [d["module"] for d in deltas] == ["a", "b"]  # per module, not one group for the whole model
    assert deltas[0]["columns"]["m.int8.onnx @ x86-cpu"]["delta_ms"] == pytest.approx(-1.0)
    assert deltas[0]["columns"]["m.onnx @ openvino-cpu"] is None
    text = alignment(list(tables.values()), ["m.onnx @ x86-cpu", "m.int8.onnx @ x86-cpu", "m.onnx @ openvino-cpu"])
    assert text.startswith("by module path") and "m.onnx @ openvino-cpu: the provider ran the whole graph" in text
