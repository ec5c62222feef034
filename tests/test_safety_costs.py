"""Issue 12: models with external data profile end to end and a missing or truncated data file is said in
one line before measuring; cost tables with nonsense figures, no model hash, a foreign or unnamed target,
or all-zero costs are refused in one line."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.formats.costs import CostTable

FAST = ["--repeats", "2", "--window", "0.2", "--idle", "0", "--profile-runs", "5"]


@pytest.fixture(scope="module")
def ext_model(tmp_path_factory):
    """The MNIST CNN exported with its weights in ``m.onnx.data``."""
    out = tmp_path_factory.mktemp("ext") / "m.onnx"
    r = CliRunner().invoke(main, ["export", "mnist-cnn", "--external-data", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert (out.parent / "m.onnx.data").stat().st_size > 100_000
    return out


@pytest.fixture(scope="module")
def ext_costs(ext_model, tmp_path_factory):
    """``toolchain profile`` of the external-data model: the whole run, per-layer pass included."""
    out = tmp_path_factory.mktemp("ext-costs")
    r = CliRunner().invoke(main, ["profile", str(ext_model), "--target", "x86-cpu", "--meter", "estimate", *FAST,
                                  "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out / "costs.json"


def test_profile_of_an_external_data_model_completes(ext_costs):
    table = CostTable.load(ext_costs)
    assert table.rows and sum(r.energy_j_mean for r in table.rows) > 0
    assert sum(r.macs for r in table.rows) > 0 and sum(r.params for r in table.rows) > 100_000  # dims were read
    assert table.model["source_hash"] and table.target["name"] == "x86-cpu"


def _copy(ext_model, tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    shutil.copy(ext_model, d / "m.onnx")
    shutil.copy(ext_model.parent / "m.onnx.data", d / "m.onnx.data")
    return d / "m.onnx"


def _never_measure(monkeypatch):
    import toolchain.profile.run as run

    def fail(*a, **k):
        raise AssertionError("measured a model whose external data is broken")
    monkeypatch.setattr(run, "measure", fail)
    monkeypatch.setattr(run, "_measure_alone", fail)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_broken_external_data_is_one_line_before_measuring(ext_model, tmp_path, monkeypatch, damage):
    model = _copy(ext_model, tmp_path, damage)
    data = model.parent / "m.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    _never_measure(monkeypatch)
    runner = CliRunner()
    for args in (["profile", str(model), "--meter", "estimate", *FAST, "-o", str(tmp_path / "o")],
                 ["compare", str(model), str(ext_model), "--meter", "estimate", *FAST, "-o", str(tmp_path / "c")],
                 ["inspect", str(model)]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2, (args[0], r.output)
        assert r.output.startswith("error:") and r.output.count("\n") == 1, r.output
        assert f"{data}:" in r.output and f"is {damage}" in r.output, r.output
        assert "toolchain-prof" not in r.output  # not a scratch path


def test_external_data_check_passes_a_whole_model(ext_model):
    from toolchain.core.onnxfile import check_external_data

    check_external_data(ext_model)  # no error


# ------------------------------------------------------------------------------------------ cost tables

def _write(tmp_path, data, name="t.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


@pytest.fixture(scope="module")
def mnist_loaded():
    from toolchain.model.load import load_model

    return load_model("mnist-cnn")


@pytest.fixture
def raw_table(mnist_loaded):
    """A sound cost table of the MNIST CNN on x86-cpu (as ``toolchain profile`` writes it, figures made up)."""
    from torch import nn

    from toolchain.formats.costs import LayerCost

    layers = [n for n, m in mnist_loaded.module.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    shares = [1 / len(layers)] * len(layers)
    j, lat = 0.002, 0.5
    rows = [LayerCost(module=m, module_type="torch.nn.Conv2d", onnx_nodes=[f"/{m}/op"], kernels=1, op_types=["Conv"],
                      latency_ms_mean=lat * s, latency_ms_std=0.0, share=s, energy_j_mean=j * s, energy_j_std=0.0,
                      macs=1000, params=10, bytes_moved=100) for m, s in zip(layers, shares, strict=True)]
    stat = {"mean": j, "std": j * 0.02, "ci95": [j * 0.9, j * 1.1], "n": 5, "cv_pct": 2.0}
    measurement = {
        "label": "m.onnx", "batch": 1, "meter": {"name": "estimate", "kind": "estimated", "source": "TDP"},
        "idle_baseline": {"watts": 0.0, "seconds": 0.0}, "repeats": 5, "inferences_per_window": [100] * 5,
        "latency_ms": {"median_ms": lat, "mean_ms": lat, "std_ms": 0.01, "p10_ms": lat * 0.9, "p90_ms": lat * 1.1,
                       "ci95_ms": [lat * 0.95, lat * 1.05], "runs": 500},
        "joules_per_inference": {"net": stat, "gross": stat, "kind": "estimated"},
        "watts": {"gross": {**stat, "mean": 4.0}, "net": {**stat, "mean": 4.0}, "kind": "estimated"},
        "notes": [], "gco2e_per_1000": {"mean": 0.0002, "ci95": [0.0001, 0.0003], "kind": "estimated",
                                        "intensity_g_per_kwh": 400.0, "intensity_source": "test"}}
    return CostTable(
        model={"name": "m.onnx", "sha256": "ab" * 32, "source_hash": mnist_loaded.source_hash, "precision": "fp32"},
        target={"name": "x86-cpu", "providers": ["CPUExecutionProvider"]},
        meter={"name": "estimate", "kind": "estimated", "source": "TDP", "idle_watts": 0.0},
        measurement=measurement, profile={"runs": 5, "gap_pct": -3.0}, rows=rows, versions={}).to_dict()


def test_the_synthetic_table_is_sound(raw_table, mnist_loaded, tmp_path):
    from toolchain.prune.costs import costs_for

    table = CostTable.load(_write(tmp_path, raw_table))
    assert sum(costs_for(table, mnist_loaded, mnist_loaded.module, "x86-cpu", "energy").values()) > 0


@pytest.mark.parametrize(("where", "value", "match"), [
    ("row energy", -0.001, "negative"),
    ("row energy", float("nan"), "not a finite"),
    ("row latency", float("inf"), "not a finite"),
    ("row share", -0.5, "negative"),
    ("net mean", -1e-3, "negative"),
    ("net mean", float("nan"), "not a finite"),
    ("row energy", "0.1", "not a number"),
])
def test_nonsense_figures_are_refused_on_load(raw_table, tmp_path, where, value, match):
    data = copy.deepcopy(raw_table)
    if where == "row energy":
        data["rows"][0]["energy_j_mean"] = value
    elif where == "row latency":
        data["rows"][0]["latency_ms_mean"] = value
    elif where == "row share":
        data["rows"][0]["share"] = value
    else:
        data["measurement"]["joules_per_inference"]["net"]["mean"] = value
    with pytest.raises(ToolchainError, match=match) as err:
        CostTable.load(_write(tmp_path, data))
    assert "\n" not in str(err.value)


def test_a_sound_table_with_negative_confidence_bounds_loads(raw_table, tmp_path):
    data = copy.deepcopy(raw_table)
    data["measurement"]["joules_per_inference"]["net"]["ci95"][0] = -1e-6  # mean - t * sem, noisy windows
    data["measurement"]["latency_ms"]["p10_ms"] = -0.01  # quantiles extrapolate below a few values
    CostTable.load(_write(tmp_path, data))


def test_a_table_without_a_target_name_is_refused(raw_table, tmp_path):
    data = copy.deepcopy(raw_table)
    data["target"].pop("name")
    with pytest.raises(ToolchainError, match="no target"):
        CostTable.load(_write(tmp_path, data))


def test_costs_for_requires_the_model_hash(raw_table, mnist_loaded):
    from toolchain.prune.costs import costs_for

    data = copy.deepcopy(raw_table)
    assert costs_for(CostTable.from_dict(data), mnist_loaded, mnist_loaded.module, "x86-cpu", "energy")
    data["model"].pop("source_hash")
    with pytest.raises(ToolchainError, match="source hash"):
        costs_for(CostTable.from_dict(data), mnist_loaded, mnist_loaded.module, "x86-cpu", "energy")
    data["model"]["source_hash"] = None
    with pytest.raises(ToolchainError, match="source hash"):
        costs_for(CostTable.from_dict(data), mnist_loaded, mnist_loaded.module, None, "energy")


def test_the_target_is_always_checked(raw_table, mnist_loaded):
    from toolchain.prune.costs import costs_for, table_target

    table = CostTable.from_dict(copy.deepcopy(raw_table))
    assert table_target(table, None) == "x86-cpu"  # no --target: the table's is used, and can be named
    assert table_target(table, "x86-cpu") == "x86-cpu"
    with pytest.raises(ToolchainError, match="measured on target 'x86-cpu', not 'x86-vnni'"):
        costs_for(table, mnist_loaded, mnist_loaded.module, "x86-vnni", "energy")
    table.target = {"providers": ["CPUExecutionProvider"]}  # built in memory, not loaded: still checked
    with pytest.raises(ToolchainError, match="no target"):
        costs_for(table, mnist_loaded, mnist_loaded.module, None, "energy")


@pytest.mark.parametrize("metric", ["energy", "latency"])
def test_an_all_zero_table_is_a_clear_error(raw_table, mnist_loaded, metric):
    from toolchain.prune.costs import costs_for

    data = copy.deepcopy(raw_table)
    for row in data["rows"]:
        row["energy_j_mean"] = row["latency_ms_mean"] = 0.0
    with pytest.raises(ToolchainError, match="zero for every layer") as err:
        costs_for(CostTable.from_dict(data), mnist_loaded, mnist_loaded.module, None, metric)
    assert "\n" not in str(err.value)


def test_negative_costs_in_memory_are_refused_by_costs_for(raw_table, mnist_loaded):
    from toolchain.prune.costs import costs_for

    table = CostTable.from_dict(copy.deepcopy(raw_table))
    table.rows[0].energy_j_mean = -1.0  # altered after loading
    with pytest.raises(ToolchainError, match="negative"):
        costs_for(table, mnist_loaded, mnist_loaded.module, None, "energy")


def test_prune_cli_refuses_an_all_zero_or_negative_table(raw_table, tmp_path):
    runner = CliRunner()
    zero = copy.deepcopy(raw_table)
    for row in zero["rows"]:
        row["energy_j_mean"] = 0.0
    neg = copy.deepcopy(raw_table)
    neg["rows"][0]["energy_j_mean"] = -abs(neg["rows"][0]["energy_j_mean"]) - 1.0
    for data, match in ((zero, "zero for every layer"), (neg, "negative")):
        p = _write(tmp_path, data, f"{match[:4]}.json")
        r = runner.invoke(main, ["prune", "mnist-cnn", "--costs", str(p), "--importance", "energy",
                                 "--target-energy-reduction", "0.2", "--eval", "builtin:mnist", "--samples", "200",
                                 "--epochs", "1", "--max-steps", "1", "-o", str(tmp_path / f"o-{match[:4]}")])
        assert r.exit_code == 2 and match in r.output and r.output.count("\n") == 1, r.output


def test_prune_model_refuses_all_zero_costs(mnist_loaded):
    from toolchain.data.dataset import DataOptions
    from toolchain.model.data import load_dataset_for
    from toolchain.prune import PruneConfig, prune_model

    data = load_dataset_for("builtin:mnist", mnist_loaded, DataOptions(samples=64))
    config = PruneConfig(importance="energy", target_energy_reduction=0.2, step=0.25, max_steps=1,
                         finetune_epochs=0)
    with pytest.raises(ToolchainError, match="zero for every layer"):
        prune_model(mnist_loaded, config, data, data, costs={"features.0": 0.0, "classifier.0": 0.0})
