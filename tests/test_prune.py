"""Structured pruning: cost-table checks, bad input, energy-aware steps, and pruned models that reload
without unpickling and export to ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.model.load import load_model
from toolchain.prune import PruneConfig

FAST = ["--samples", "400", "--epochs", "1", "--max-steps", "3", "--step", "0.25"]


@pytest.fixture(scope="module")
def mnist_costs(mnist_cnn, tmp_path_factory):
    """A real cost table of the MNIST CNN on x86-cpu (estimated energy: no RAPL in CI)."""
    _, result = mnist_cnn
    out = tmp_path_factory.mktemp("costs") / "mnist.costs"
    r = CliRunner().invoke(main, ["profile", result.path, "--target", "x86-cpu", "--meter", "estimate", "--repeats", "2",
                                  "--window", "0.2", "--idle", "0", "--profile-runs", "5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out / "costs.json"


def test_config_rejects_bad_ratios_and_combinations():
    with pytest.raises(ToolchainError, match="out of range"):
        PruneConfig(importance="l2", ratio=1.5).validate()
    with pytest.raises(ToolchainError, match="exactly one"):
        PruneConfig(importance="l2").validate()
    with pytest.raises(ToolchainError, match="per-layer ratios"):
        PruneConfig(importance="energy", ratio=0.3).validate()
    with pytest.raises(ToolchainError, match="unknown importance"):
        PruneConfig(importance="random", ratio=0.3).validate()


def test_cli_errors_are_one_line(mnist_costs, tiny_resnet, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["prune", "mnist-cnn", "--importance", "l2", "--ratio", "1.2", "--eval", "builtin:mnist",
                             "-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "out of range" in r.output and r.output.count("\n") == 1
    r = runner.invoke(main, ["prune", "mnist-cnn", "--importance", "l2", "--ratio", "0.3", "--exclude", "features.9",
                             "--eval", "builtin:mnist", *FAST, "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "no layer named 'features.9'" in r.output and r.output.count("\n") == 1
    # a cost table of another model is stale for this one
    r = runner.invoke(main, ["prune", "tiny-resnet", "--costs", str(mnist_costs), "--target-energy-reduction", "0.2",
                             "--eval", "random", *FAST, "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "another model" in r.output and r.output.count("\n") == 1
    r = runner.invoke(main, ["prune", "mnist-cnn", "--costs", str(mnist_costs), "--target", "x86-vnni",
                             "--target-energy-reduction", "0.2", "--eval", "builtin:mnist", *FAST, "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "measured on target 'x86-cpu'" in r.output
    r = runner.invoke(main, ["prune", "mnist-cnn", "--target-energy-reduction", "0.2", "--eval", "builtin:mnist", *FAST,
                             "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and "cost table" in r.output


def test_energy_aware_pruning_cuts_costly_layers_within_budget(mnist_costs, tmp_path):
    out = tmp_path / "pruned"
    r = CliRunner().invoke(main, ["prune", "mnist-cnn", "--costs", str(mnist_costs), "--target", "x86-cpu",
                                  "--target-energy-reduction", "0.3", "--eval", "builtin:mnist", "--max-accuracy-drop", "2",
                                  *FAST, "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    res = report["result"]
    assert res["params_after"] < res["params_before"] and res["macs_after"] < res["macs_before"]
    assert res["base_metric"] - res["final_metric"] <= 2.0 + 1e-9
    kept = [s for s in res["steps"] if s["kept"]]
    assert kept and all(s["pruned"] != ["all"] for s in res["steps"])  # one group a step, chosen by the index
    assert res["channels"]["classifier.2"][0] == res["channels"]["classifier.2"][1] == 10  # the head is left alone
    # the saved model: tensors only, and it rebuilds the pruned shapes
    state = torch.load(out / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = load_model(str(out))
    assert sum(p.numel() for p in loaded.module.parameters()) == res["params_after"]
    # and it exports and runs in ONNX Runtime
    onnx_path = tmp_path / "pruned.onnx"
    r = CliRunner().invoke(main, ["export", str(out), "-o", str(onnx_path)])
    assert r.exit_code == 0, r.output
    from toolchain.runtime.session import create_session

    session = create_session(onnx_path)
    logits = session.run(None, {"pixel_values": np.zeros((2, 1, 28, 28), np.float32)})[0]
    assert logits.shape == (2, 10)


def test_uniform_magnitude_pruning_with_round_to(tmp_path):
    out = tmp_path / "l2"
    args = ["prune", "mnist-cnn", "--importance", "l2", "--ratio", "0.5", "--round-to", "8", "--eval", "builtin:mnist",
            *FAST, "-o", str(out), "--json"]
    # --ratio is judged against the budget like every step: over it, nothing is written
    refused = CliRunner().invoke(main, [*args, "--max-accuracy-drop", "0"])
    assert refused.exit_code == 2 and "--ratio 0.5 loses" in refused.output and "nothing written" in refused.output
    assert not (out / "pruned.json").exists()
    r = CliRunner().invoke(main, [*args, "--max-accuracy-drop", "5"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)["result"]
    assert res["reduction_kind"] == "MACs (no cost table)"
    assert res["reduction"] == pytest.approx(1 - res["macs_after"] / res["macs_before"]) and res["reduction"] > 0.3
    assert res["steps"][0]["kept"] and res["base_metric"] - res["final_metric"] <= 5
    channels = res["channels"]
    for name in ("features.0", "features.3", "classifier.0"):
        before, after = channels[name]
        assert after < before and after % 8 == 0
    again = CliRunner().invoke(main, ["prune", "mnist-cnn", "--importance", "l2", "--ratio", "0.5", "--eval",
                                      "builtin:mnist", *FAST, "-o", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_rolled_back_steps_keep_the_head_and_taylor_runs(mnist_costs, tmp_path):
    """A zero budget rolls steps back (the model object is swapped for its snapshot): the head must stay."""
    r = CliRunner().invoke(main, ["prune", "mnist-cnn", "--costs", str(mnist_costs), "--target-energy-reduction", "0.5",
                                  "--eval", "builtin:mnist", "--max-accuracy-drop", "0", "--samples", "400", "--epochs",
                                  "0", "--max-steps", "4", "--step", "0.5", "-o", str(tmp_path / "z"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)["result"]
    assert res["channels"]["classifier.2"] == [10, 10] and res["final_metric"] >= res["base_metric"]
    r = CliRunner().invoke(main, ["prune", "mnist-cnn", "--importance", "taylor", "--ratio", "0.25", "--eval",
                                  "builtin:mnist", *FAST, "-o", str(tmp_path / "t"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["result"]["params_after"] < json.loads(r.output)["result"]["params_before"]


def test_transformer_heads_and_mlp_width_are_cut_coherently(tmp_path):
    out = tmp_path / "bert"
    r = CliRunner().invoke(main, ["prune", "tiny-bert", "--importance", "l2", "--ratio", "0.5", "--eval", "random",
                                  "--samples", "40", "--epochs", "0", "--max-accuracy-drop", "100", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    channels = json.loads(r.output)["result"]["channels"]
    heads = {k: v for k, v in channels.items() if k.endswith("(heads)")}
    assert heads and all(after == before // 2 for before, after in heads.values())
    mlp = {k: v for k, v in channels.items() if k.endswith("intermediate.dense")}
    assert mlp and all(after < before for before, after in mlp.values())
    loaded = load_model(str(out))
    block = next(m for m in loaded.module.modules() if hasattr(m, "num_attention_heads") and hasattr(m, "query"))
    assert block.all_head_size == block.query.out_features == block.num_attention_heads * block.attention_head_size
    onnx_path = tmp_path / "bert.onnx"
    r = CliRunner().invoke(main, ["export", str(out), "-o", str(onnx_path)])  # parity against PyTorch included
    assert r.exit_code == 0, r.output


def test_reprofile_measures_the_pruned_model_on_the_target(mnist_costs, tmp_path):
    """Hardware in the loop: every kept step is exported and profiled again (estimate meter here)."""
    r = CliRunner().invoke(main, ["prune", "mnist-cnn", "--costs", str(mnist_costs), "--target", "x86-cpu",
                                  "--target-energy-reduction", "0.9", "--eval", "builtin:mnist", "--max-accuracy-drop", "5",
                                  "--samples", "400", "--epochs", "1", "--max-steps", "2", "--step", "0.25",
                                  "--reprofile-every", "1", "--meter", "estimate", "-o", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)["result"]
    kept = [s for s in res["steps"] if s["kept"]]
    assert kept and all(s["measured_reduction"] is not None for s in kept) and res["reduction_kind"] == "measured"


def test_predicted_costs_follow_each_modules_work():
    """A pooling after a pruned convolution, and the next convolution's MACs, shrink with its channels;
    modules whose work is unchanged keep their cost."""
    from torch import nn

    from toolchain.model.spec import InputSpec, LoadedModel
    from toolchain.prune import apply_pruning, module_work, predict_costs

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 8, 3, padding=1),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    loaded = LoadedModel(module=net, inputs=[InputSpec("x", (1, 1, 8, 8))], output_names=["y"], source="test",
                         kind="user", description="test", source_hash="0" * 64, task="image-classification")
    example = (torch.zeros(2, 1, 8, 8),)
    before = module_work(loaded, net, example)
    assert before["0"] == 16 * 8 * 8 * 9 and before["2"] == 16 * 4 * 4 and before["3"] == 8 * 4 * 4 * 16 * 9
    apply_pruning(loaded, net, example, {net[0]: 0.5}, [net[5]], PruneConfig(importance="l2", ratio=0.5), None)
    after = module_work(loaded, net, example)
    costs = {"0": 4.0, "2": 2.0, "3": 3.0, "5": 1.0, "(unmapped)": 0.5}
    predicted = predict_costs(costs, before, after)
    assert predicted == pytest.approx({"0": 2.0, "2": 1.0, "3": 1.5, "5": 1.0, "(unmapped)": 0.5})


def test_a_per_onnx_node_or_fused_table_is_refused_in_one_line(mnist_costs, tmp_path):
    import json

    data = json.loads(mnist_costs.read_text())
    for name, change in (("node", {"granularity": "onnx-node"}), ("fused", None)):
        d = json.loads(json.dumps(data))
        if change:
            d.update(change)
        else:
            d["rows"][0]["fused_by"] = "OpenVINO"
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(d))
        r = CliRunner().invoke(main, ["prune", "mnist-cnn", "--costs", str(path), "--target", "x86-cpu",
                                      "--target-energy-reduction", "0.2", "--eval", "builtin:mnist", *FAST,
                                      "-o", str(tmp_path / name)])
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert ("per ONNX node" if name == "node" else "fused into one kernel") in r.output
