"""Other processes' CPU load per measuring window (fake /proc readings, and one real read), energy per
sample at --batch N, the v1 -> v2 cost-table upgrade, and cross-target comparisons measured in one
interleaved run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from toolchain.cli import main
from toolchain.core.cpuload import (
    MIN_CHECK_S,
    OTHER_LOAD_WARN,
    CpuLoadProbe,
    CpuTimes,
    other_share,
    parse_stat,
)
from toolchain.formats.costs import SCHEMA_VERSION, CostTable, upgrade_v1
from toolchain.profile.measure import measure

FAST = ["--repeats", "2", "--window", "0.1", "--idle", "0", "--profile-runs", "3", "--warmup", "1"]
STAT = "cpu  {u} 0 {s} 9000 50 0 0 7 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\nintr 1 2 3\n"


class CountingMeter:
    """A counter meter advancing by exactly ``per_call`` joules per workload call."""

    name, measured, source, min_window_s = "fake", True, "fake counter", 0.0

    def __init__(self, per_call: float = 0.5):
        self.counter, self.per_call = 0.0, per_call

    def work(self) -> None:
        self.counter += self.per_call

    def begin(self):
        import time

        return self.counter, time.perf_counter()

    def end(self, token):
        import time

        from toolchain.energy import EnergyReading

        joules = self.counter - token[0]
        return EnergyReading({"pkg": joules}, joules, time.perf_counter() - token[1])

    def close(self) -> None:
        pass


class ScriptedProbe:
    """Readings in which other processes use ``shares[k]`` of 2 CPUs during the k-th window (begin/end read
    pairs), this process one CPU-second per window second."""

    def __init__(self, shares: list[float]):
        self.shares, self.reads = shares, 0
        self.busy = self.own = self.wall = 0.0

    def read(self) -> CpuTimes:
        if self.reads % 2:  # the end of window reads // 2
            share = self.shares[self.reads // 2]
            self.wall += 1.0
            self.own += 1.0
            self.busy += 1.0 + share * 2 * 1.0
        self.reads += 1
        return CpuTimes(self.busy, 2, self.own, self.wall)


def test_stat_arithmetic_with_a_fake_proc_tree(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(u=1000, s=500))
    assert parse_stat(stat.read_text(), 100.0) == (15.0, 2)  # user + system (+ nice, irq, softirq); idle/steal out
    own, clock = iter([10.0, 10.5]), iter([100.0, 101.0])
    probe = CpuLoadProbe(stat, own_cpu=lambda: next(own), clock=lambda: next(clock), ticks_per_s=100.0)
    begin = probe.read()
    stat.write_text(STAT.format(u=1100, s=550))  # 1.5 busy CPU-seconds, 0.5 of them this process's
    end = probe.read()
    assert other_share(begin, end) == pytest.approx(1.0 / (1.0 * 2))
    assert other_share(begin, begin) is None  # no time passed
    assert other_share(CpuTimes(20.0, 2, 0.0, 0.0), CpuTimes(20.0, 2, 5.0, 1.0)) == 0.0  # clamped, never negative
    assert parse_stat("intr 1 2\n", 100.0) is None and parse_stat("cpu 1 2\ncpu0 1\n", 100.0) is None


def test_missing_proc_stat_is_not_checked_rather_than_zero(tmp_path):
    probe = CpuLoadProbe(tmp_path / "absent")
    a, b = probe.read(), probe.read()
    assert a.busy_s is None and a.cpus is None and other_share(a, b) is None
    meter = CountingMeter()
    m = measure({"m": meter.work}, meter, repeats=2, window_s=0.0, warmup=0, idle_s=0, cpu=probe)["m"]
    assert [w.other_cpu_share for w in m.windows] == [None, None]
    load = m.to_dict()["cpu_load"]
    assert load["checked"] is False and load["max_other_share"] is None and "not checked" in load["source"]
    assert not any("other processes used" in n for n in m.notes)


def test_windows_too_short_for_tick_counts_are_not_checked():
    begin, end = CpuTimes(10.0, 2, 1.0, 0.0), CpuTimes(10.5, 2, 1.0, MIN_CHECK_S / 2)
    assert other_share(begin, end) is None and other_share(begin, end, min_s=0.0) == pytest.approx(1.0)


def test_loaded_windows_are_recorded_and_warned():
    meter = CountingMeter()
    shares = [0.02, 0.47, 0.05]
    m = measure({"m": meter.work}, meter, repeats=3, window_s=0.0, warmup=0, idle_s=0, cpu=ScriptedProbe(shares))["m"]
    assert [w.other_cpu_share for w in m.windows] == pytest.approx(shares)
    warnings = [n for n in m.notes if "other processes" in n]
    assert warnings == ["window 2/3: other processes used 47% of the 2 CPUs (over 10%): figures may be inflated"]
    d = m.to_dict()
    assert d["cpu_load"]["windows_over"] == [2] and d["cpu_load"]["max_other_share"] == pytest.approx(0.47)
    assert d["cpu_load"]["threshold"] == OTHER_LOAD_WARN and d["cpu_load"]["cpus"] == 2
    assert [w["other_cpu_share"] for w in d["windows"]] == pytest.approx(shares)


def test_a_real_read_of_this_machine():
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat here")
    probe = CpuLoadProbe()
    a = probe.read()
    sum(i * i for i in range(200_000))  # some CPU time of our own
    b = probe.read()
    assert a.busy_s is not None and a.busy_s > 0 and a.cpus >= 1 and b.own_s >= a.own_s
    share = other_share(a, b)
    assert share is None or 0.0 <= share <= 1.0


def test_energy_is_per_sample_and_latency_per_call():
    meter = CountingMeter(per_call=0.8)
    m = measure({"m": meter.work}, meter, repeats=2, window_s=0.0, warmup=0, idle_s=0, batch=4)["m"]
    assert m.joules.mean == pytest.approx(0.2) and m.gross_joules.mean == pytest.approx(0.2)  # 0.8 J per call / 4
    d = m.to_dict()
    assert d["per_inference"] == "sample" and d["batch"] == 4
    assert d["latency_ms_per_sample"]["mean_ms"] == pytest.approx(d["latency_ms"]["mean_ms"] / 4)
    assert sum(w["gross_j"] for w in d["windows"]) / sum(w["inferences"] * 4 for w in d["windows"]) == pytest.approx(0.2)


def _v2_table(batch: int) -> CostTable:
    from toolchain.formats.costs import LayerCost

    stat = {"mean": 0.25, "std": 0.01, "ci95": [0.2, 0.3], "n": 2, "cv_pct": 4.0}
    m = {"label": "m", "batch": batch, "per_inference": "sample", "meter": {"name": "fake", "kind": "measured",
         "source": "fake"}, "repeats": 2, "latency_ms": {"mean_ms": 2.0, "median_ms": 2.0},
         "joules_per_inference": {"net": dict(stat), "gross": dict(stat), "kind": "measured"},
         "watts": {"gross": dict(stat), "net": dict(stat), "kind": "measured"}, "notes": [],
         "gco2e_per_1000": {"mean": 0.03, "ci95": [0.02, 0.04], "kind": "measured", "intensity_g_per_kwh": 436,
                            "intensity_source": "test"}}
    rows = [LayerCost("a", "", ["n1"], 1, ["Conv"], 1.0, 0.0, 0.5, 0.125, 0.01, 1, 1, 1),
            LayerCost("b", "", ["n2"], 1, ["Conv"], 1.0, 0.0, 0.5, 0.125, 0.01, 1, 1, 1)]
    return CostTable(model={"name": "m", "sha256": "ab" * 32}, target={"name": "cpu", "providers": []},
                     meter={"name": "fake", "kind": "measured", "source": "fake", "idle_watts": 0.0}, measurement=m,
                     profile={}, rows=rows, versions={})


def test_a_v1_table_is_read_per_sample():
    """v1 tables stored energy per call; on load they are divided by their batch (and say so)."""
    v2 = _v2_table(batch=4).to_dict()
    v1 = copy.deepcopy(v2)
    v1["schema_version"] = 1
    del v1["granularity"], v1["measurement"]["per_inference"]
    for side in ("net", "gross"):  # per call: 4 samples' worth
        j = v1["measurement"]["joules_per_inference"][side]
        j.update(mean=j["mean"] * 4, std=j["std"] * 4, ci95=[x * 4 for x in j["ci95"]])
    co2 = v1["measurement"]["gco2e_per_1000"]
    co2.update(mean=co2["mean"] * 4, ci95=[x * 4 for x in co2["ci95"]])
    for row in v1["rows"]:
        row["energy_j_mean"] *= 4
        row["energy_j_std"] *= 4
        for key in ("fused_by", "note", "input_shapes", "output_shapes"):
            del row[key]
    table = CostTable.from_dict(v1)
    assert table.schema_version == SCHEMA_VERSION and table.granularity == "module"
    assert table.joules_per_inference == pytest.approx(0.25) and table.measured.per_inference == "sample"
    assert table.measured.joules_per_inference.gross.ci95 == pytest.approx((0.2, 0.3))
    assert table.measured.gco2e_per_1000.mean == pytest.approx(0.03)
    assert [r.energy_j_mean for r in table.rows] == pytest.approx([0.125, 0.125])
    assert any("v1 cost table" in n for n in table.measured.notes)
    assert v1["measurement"]["joules_per_inference"]["net"]["mean"] == pytest.approx(1.0)  # the input is not changed
    assert upgrade_v1(v1)["schema_version"] == SCHEMA_VERSION
    again = CostTable.from_dict(json.loads(table.to_json()))  # written back as v2, read as is
    assert again.joules_per_inference == pytest.approx(0.25)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    import numpy as np
    from onnx import numpy_helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])
    w = numpy_helper.from_array(np.full((32, 32), 0.01, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["y"], name="act")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("plain") / "plain.onnx"
    save(model, str(path))
    return path


def test_profile_at_batch_2_reports_energy_per_sample(plain_model, tmp_path):
    r = CliRunner().invoke(main, ["profile", str(plain_model), "--meter", "estimate", "--batch", "2", *FAST, "--window", "1",
                                  "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    m = data["measurement"]
    assert m["batch"] == 2 and m["per_inference"] == "sample" and data["model"]["inputs"]["x"] == [2, 32]
    per_sample = [w["net_j"] / (w["inferences"] * 2) for w in m["windows"]]
    assert m["joules_per_inference"]["net"]["mean"] == pytest.approx(sum(per_sample) / len(per_sample))
    assert sum(row["energy_j_mean"] for row in data["rows"]) == pytest.approx(m["joules_per_inference"]["net"]["mean"])
    assert m["latency_ms_per_sample"]["median_ms"] == pytest.approx(m["latency_ms"]["median_ms"] / 2)
    assert all(w["other_cpu_share"] is None or 0 <= w["other_cpu_share"] <= 1 for w in m["windows"])
    assert m["cpu_load"]["checked"] is Path("/proc/stat").is_file()


def test_targets_sharing_a_meter_are_measured_in_one_interleaved_run(plain_model, tmp_path, monkeypatch):
    import toolchain.profile.run as run
    from toolchain.targets.target import builtin_dir

    twin = tmp_path / "x86-cpu-twin.toml"
    twin.write_text((builtin_dir() / "x86-cpu.toml").read_text().replace('name = "x86-cpu"', 'name = "x86-cpu-twin"'))
    other = tmp_path / "other.onnx"
    shutil.copy(plain_model, other)
    calls = []
    real = run.measure

    def counting(candidates, *args, **kwargs):
        calls.append(sorted(candidates))
        return real(candidates, *args, **kwargs)

    monkeypatch.setattr(run, "measure", counting)
    r = CliRunner().invoke(main, ["compare", str(plain_model), str(other), "--targets", f"x86-cpu,{twin}",
                                  "--meter", "estimate", *FAST, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert len(calls) == 1 and len(calls[0]) == 4  # 2 models x 2 targets, one measure() call
    (group,) = data["interleaving"]
    assert group["targets"] == ["x86-cpu", "x86-cpu-twin"] and len(group["columns"]) == 4
    assert [(Path(c["model"]).name, c["target"]) for c in data["columns"]] == [
        ("plain.onnx", "x86-cpu"), ("other.onnx", "x86-cpu"), ("plain.onnx", "x86-cpu-twin"),
        ("other.onnx", "x86-cpu-twin")]
    assert "ONNX node" in data["layer_alignment"] and data["layer_deltas"]
    assert all(all(v is not None for v in d["columns"].values()) for d in data["layer_deltas"])
    text = CliRunner().invoke(main, ["compare", str(plain_model), "--targets", f"x86-cpu,{twin}", "--meter",
                                     "estimate", *FAST])
    assert text.exit_code == 0 and "windows interleaved" in text.output and "x86-cpu-twin" in text.output


def test_several_loaded_windows_make_one_warning():
    from toolchain.core.cpuload import windows_warning

    assert windows_warning([0.02, 0.05], 2) is None
    assert windows_warning([None, 0.5], 2) == ("window 2/2: other processes used 50% of the 2 CPUs (over 10%): "
                                               "figures may be inflated")
    assert windows_warning([0.44, 0.02, 0.56, 0.5], 2) == ("windows 1, 3, 4 of 4: other processes used 44-56% of the "
                                                           "2 CPUs (over 10%): figures may be inflated")
