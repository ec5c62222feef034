"""Measuring windows, per-layer cost tables, and the `profile` / `compare` commands (no hardware meter:
fake meters for exact numbers, the estimate meter through the CLI)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.core.stats import Summary
from toolchain.energy import EnergyReading, WindowTooShortError
from toolchain.formats.costs import (
    SCHEMA_VERSION,
    CostTable,
    EnergyStat,
    LatencyStat,
    MeasurementRecord,
    MeterInfo,
    grams_co2e_per_1000,
)
from toolchain.profile.attribution import graph_stats
from toolchain.profile.measure import measure
from toolchain.profile.trace import parse_trace


class CountingMeter:
    """A counter meter whose counter advances by exactly ``joules_per_call`` per workload call (and not at
    all when idle); windows of fewer than ``min_calls`` calls are too short for it."""

    name, measured, source, min_window_s = "fake", True, "fake counter", 0.0

    def __init__(self, joules_per_call: float = 0.5, min_calls: int = 0):
        self.counter, self.calls, self.per_call, self.min_calls = 0.0, 0, joules_per_call, min_calls

    def work(self) -> None:
        self.counter += self.per_call
        self.calls += 1

    def begin(self):
        return self.counter, self.calls, time.perf_counter()

    def end(self, token) -> EnergyReading:
        counter, calls, t = token
        if 0 < self.calls - calls < self.min_calls:
            raise WindowTooShortError("the fake counter did not advance")
        joules = self.counter - counter
        return EnergyReading({"pkg": joules}, joules, time.perf_counter() - t)

    def close(self) -> None:
        pass


def test_stat_uses_student_t():
    s = Summary.of([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0 and s.n == 3
    assert s.ci95 == pytest.approx((2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5))
    assert s.cv_pct == pytest.approx(50.0)


def test_windows_give_exact_joules_per_inference_and_grow_when_too_short():
    meter = CountingMeter(joules_per_call=0.5, min_calls=8)
    result = measure({"m": meter.work}, meter, repeats=3, window_s=0.0, warmup=1, idle_s=0.01)["m"]
    assert result.joules.mean == pytest.approx(0.5) and result.joules.std == pytest.approx(0.0, abs=1e-12)
    assert result.idle_watts == 0.0 and result.gross_joules.mean == pytest.approx(0.5)
    assert len(result.windows) == 3 and all(w.inferences >= 8 for w in result.windows)
    assert result.notes and "window grown" in result.notes[0]
    assert result.kind == "measured" and result.to_dict()["joules_per_inference"]["kind"] == "measured"


def test_interleaved_candidates_and_bad_repeats():
    a, b = CountingMeter(1.0), None
    b_calls = []
    meter = a
    res = measure({"a": a.work, "b": lambda: (b_calls.append(1), a.work(), a.work())}, meter, repeats=2,
                  window_s=0.0, warmup=0, idle_s=0)
    assert res["a"].joules.mean == pytest.approx(1.0) and res["b"].joules.mean == pytest.approx(2.0)
    with pytest.raises(ToolchainError, match="at least 2"):
        measure({"a": a.work}, meter, repeats=1)
    assert b is None


def test_trace_per_run_times(tmp_path):
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
              {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "Conv", "provider": "CPU"}},
              {"cat": "Node", "name": "conv_kernel_time", "ts": 210, "dur": 30, "args": {"op_name": "Conv", "provider": "CPU"}},
              {"cat": "Node", "name": "conv_kernel_time", "ts": 410, "dur": 20, "args": {"op_name": "Conv", "provider": "CPU"}},
              {"cat": "Node", "name": "relu_kernel_time", "ts": 420, "dur": 5, "args": {"op_name": "Relu", "provider": "CPU"}}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    nodes = {n.name: n for n in parse_trace(path, skip_runs=1)}
    assert nodes["conv"].per_run_us == (30.0, 20.0) and nodes["conv"].total_us == 50.0 and nodes["conv"].calls == 2
    assert nodes["relu"].per_run_us == (0.0, 5.0)
    path.write_text("{not json")
    with pytest.raises(ToolchainError, match="not a readable"):
        parse_trace(path)


def test_graph_stats_count_macs_params_and_bytes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.zeros(108, np.float32))
    m = helper.make_tensor("m", TensorProto.FLOAT, [8, 5], np.zeros(40, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "m"], ["y"], name="matmul")]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 8])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, m, shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    stats = graph_stats(model, {"x": np.zeros((2, 3, 8, 8), np.float32)})
    assert stats["conv"].macs == 2 * 4 * 8 * 8 * 27 and stats["conv"].params == 108
    assert stats["conv"].bytes_moved == (2 * 3 * 64 + 108 + 2 * 4 * 64) * 4
    assert stats["matmul"].macs == 64 * 5 * 8  # (2*4*64/8 rows) x 5 outputs x 8 inner
    assert stats["reshape"].macs == 0


def test_carbon_arithmetic():
    assert grams_co2e_per_1000(3.6, 500) == pytest.approx(0.5)  # 3.6 kJ = 1 Wh -> 0.5 g at 500 g/kWh


def test_typed_measurement_record_reads_every_key_and_json_stays_byte_identical():
    meter = CountingMeter(joules_per_call=0.5)
    result = measure({"m": meter.work}, meter, repeats=3, window_s=0.0, warmup=1, idle_s=0.01, batch=4)["m"]
    raw = result.to_dict()
    rec = MeasurementRecord.from_dict(raw)
    assert rec.label == "m" and rec.batch == 4 and rec.repeats == 3 and rec.kind == "measured"
    assert rec.meter == MeterInfo("fake", "measured", "fake counter")
    assert rec.idle_baseline.watts == raw["idle_baseline"]["watts"]
    assert list(rec.inferences_per_window) == raw["inferences_per_window"] and len(rec.windows) == 3
    assert rec.windows[0].net_j == raw["windows"][0]["net_j"] and rec.notes == tuple(raw["notes"])
    assert rec.joules_per_inference.net == EnergyStat(**{**raw["joules_per_inference"]["net"],
                                                         "ci95": tuple(raw["joules_per_inference"]["net"]["ci95"])})
    assert rec.joules_per_inference.gross.mean == raw["joules_per_inference"]["gross"]["mean"]
    assert rec.watts.gross.cv_pct == raw["watts"]["gross"]["cv_pct"] and rec.watts.kind == "measured"
    lat = raw["latency_ms"]
    assert rec.latency_ms == LatencyStat(lat["median_ms"], lat["mean_ms"], lat["std_ms"], lat["p10_ms"],
                                         lat["p90_ms"], tuple(lat["ci95_ms"]), lat["runs"])

    raw.pop("windows")
    raw["gco2e_per_1000"] = {"mean": 0.1, "ci95": [0.09, 0.11], "kind": "measured", "intensity_g_per_kwh": 400.0,
                             "intensity_source": "test grid"}
    table = CostTable(model={"name": "m"}, target={"name": "cpu"}, meter={"name": "fake", "kind": "measured",
                      "source": "fake counter", "idle_watts": 0.0}, measurement=raw, profile={}, rows=[],
                      versions={})
    assert table.measured.gco2e_per_1000.intensity_source == "test grid" and table.meter_info.idle_watts == 0.0
    assert table.joules_per_inference == table.measured.joules_per_inference.net.mean
    text = table.to_json()
    again = CostTable.from_dict(json.loads(text))
    assert again.to_json() == text and again.measured == table.measured

    partial = MeasurementRecord.from_dict({"latency_ms": {"median_ms": 2.0}, "watts": [1, 2]})
    assert partial.latency_ms.median_ms == 2.0 and partial.latency_ms.runs is None
    assert partial.joules_per_inference.net.mean is None and partial.watts.gross.mean is None and partial.kind is None


@pytest.fixture(scope="module")
def fp32_and_int8(tiny_resnet, tmp_path_factory):
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.quantize import quantize_model
    from toolchain.targets.presets import QuantConfig

    loaded, result = tiny_resnet
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    data = load_dataset("random", result.path, DataOptions(samples=8))
    return Path(result.path), quantize_model(result.path, out, QuantConfig(), data).path


FAST = ["--repeats", "2", "--window", "0.1", "--idle", "0.1", "--profile-runs", "3", "--warmup", "1"]


def test_profile_with_estimate_labels_every_figure(fp32_and_int8, tmp_path):
    fp32, _ = fp32_and_int8
    out = tmp_path / "prof"
    r = CliRunner().invoke(main, ["profile", str(fp32), "--target", "x86-cpu", "--meter", "estimate", *FAST,
                                  "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["schema_version"] == SCHEMA_VERSION and data["method"] == "time-share"
    assert data["meter"]["kind"] == "estimated" and "estimated" in data["meter"]["source"]
    m = data["measurement"]
    assert m["joules_per_inference"]["kind"] == m["watts"]["kind"] == m["gco2e_per_1000"]["kind"] == "estimated"
    assert data["profile"]["unmapped_share"] == 0.0 and all(row["module"] != "(unmapped)" for row in data["rows"])
    assert sum(row["share"] for row in data["rows"]) == pytest.approx(1.0)
    assert sum(row["energy_j_mean"] for row in data["rows"]) == pytest.approx(m["joules_per_inference"]["net"]["mean"])
    assert {p.name for p in out.iterdir()} == {"costs.json", "costs.csv", "energy.png", "energy.html"}
    rows = list(csv.DictReader(io.StringIO((out / "costs.csv").read_text())))
    assert rows and {r["energy_kind"] for r in rows} == {"estimated"} and rows[0]["model_sha256"] == data["model"]["sha256"]
    assert (out / "energy.png").read_bytes()[:4] == b"\x89PNG" and "estimated" in (out / "energy.html").read_text()
    table = CostTable.load(out)
    assert table.rows[0].share >= table.rows[-1].share and table.model["precision"] == "fp32"
    again = CliRunner().invoke(main, ["profile", str(fp32), "--meter", "estimate", *FAST, "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output


def test_rapl_missing_is_a_clear_error(fp32_and_int8, tmp_path):
    if Path("/sys/class/powercap").exists():
        pytest.skip("this machine has a powercap tree")
    fp32, _ = fp32_and_int8
    r = CliRunner().invoke(main, ["profile", str(fp32), "--target", "x86-cpu", "--meter", "rapl", *FAST,
                                  "-o", str(tmp_path / "x")])
    assert r.exit_code == 2
    line = r.output.strip()
    assert line.startswith("error:") and "\n" not in line and "rapl" in line and "--meter estimate" in line
    assert not (tmp_path / "x").exists()


def test_int8_model_info_names_its_quantization(fp32_and_int8):
    from toolchain.profile.run import model_info
    from toolchain.targets.presets import QuantConfig

    fp32, int8 = fp32_and_int8
    info = model_info(int8, {}, "random")
    assert info["precision"] == "int8" and info["quantization"] == QuantConfig().label
    assert model_info(fp32, {}, "random")["quantization"] is None


def test_compare_fp32_against_int8(fp32_and_int8, tmp_path):
    fp32, int8 = fp32_and_int8
    r = CliRunner().invoke(main, ["compare", str(fp32), str(int8), "--targets", "x86-cpu,cuda", "--meter", "estimate",
                                  *FAST, "-o", str(tmp_path / "cmp"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    cols = data["columns"]
    assert [c["precision"] for c in cols] == ["fp32", "int8"] and cols[0]["latency_ratio"] == pytest.approx(1.0)
    assert cols[1]["latency_ratio"] == pytest.approx(cols[1]["latency_ms"]["mean_ms"] / cols[0]["latency_ms"]["mean_ms"])
    assert all(c["meter"]["kind"] == "estimated" for c in cols)
    assert [s["target"] for s in data["skipped"]] == ["cuda"] and "CUDA" in data["skipped"][0]["reason"]
    deltas = data["layer_deltas"]
    assert deltas and sum(d["columns"][next(iter(d["columns"]))] is not None for d in deltas) >= len(deltas) - 1
    assert (tmp_path / "cmp" / "comparison.png").is_file() and (tmp_path / "cmp" / "comparison.html").is_file()


def test_stale_or_foreign_cost_table_is_refused(tmp_path):
    p = tmp_path / "costs.json"
    p.write_text(json.dumps({"schema": "toolchain.cost-table", "schema_version": 99}))
    with pytest.raises(ToolchainError, match="schema version"):
        CostTable.load(p)
    p.write_text("[]")
    with pytest.raises(ToolchainError):
        CostTable.load(p)
    with pytest.raises(ToolchainError, match="no such"):
        CostTable.load(tmp_path / "absent.json")


def test_profile_bad_input(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = CliRunner().invoke(main, ["profile", str(bad), "--meter", "estimate", *FAST, "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.startswith("error:")
    r = CliRunner().invoke(main, ["profile", str(bad), "--target", "no-such-target"])
    assert r.exit_code == 2 and "no-such-target" in r.output
    r = CliRunner().invoke(main, ["profile", str(bad), "--meter", "rapl", "--watts", "10"])
    assert r.exit_code == 2 and "--meter estimate" in r.output


def test_a_model_without_node_map_profiles_per_onnx_node(tmp_path):
    """An ONNX file the tool did not export (no node-to-module map; here an unnamed node) is profiled per ONNX
    node, and says so in costs.json, the CSV, the printed table and the HTML notes."""
    from onnx import save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(tmp_path / "plain.onnx"))
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["profile", str(tmp_path / "plain.onnx"), "--meter", "estimate", *FAST, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "per-ONNX-node granularity" in r.output and "ONNX node" in r.output
    table = CostTable.load(out)
    assert table.granularity == "onnx-node" and [row.module for row in table.rows] == ["Relu_0"]  # as ORT names it
    assert table.rows[0].module_type == "Relu" and table.rows[0].output_shapes == [[1, 4]]
    assert json.loads((out / "costs.json").read_text())["granularity"] == "onnx-node"
    assert {row["granularity"] for row in csv.DictReader(io.StringIO((out / "costs.csv").read_text()))} == {"onnx-node"}
    assert "per ONNX node" in (out / "energy.html").read_text()


def test_transformer_graph_stats_count_every_matmul(tiny_bert):
    """MACs of a BERT at the profiled shapes: onnx shape inference alone loses the batch in dynamo graphs
    (every MatMul was 0); the count must equal the analytic one, for both exporters."""
    import onnx

    from toolchain.profile.attribution import graph_stats

    _, result = tiny_bert
    model = onnx.load(result.path, load_external_data=False)
    seq, hidden, inter, layers = 16, 64, 128, 2
    feeds = {i.name: np.ones((1, seq), np.int64) for i in model.graph.input}
    stats = graph_stats(model, feeds)
    # per layer: Q, K, V and output projections, the two MLP matmuls, and scores + weighted values
    per_layer = 4 * seq * hidden * hidden + 2 * seq * hidden * inter + 2 * seq * seq * hidden
    assert sum(s.macs for s in stats.values()) == layers * per_layer
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(stats[name].macs > 0 and stats[name].bytes_moved > 0 for name in matmuls)
