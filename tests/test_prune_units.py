"""Per-unit pruning of transformers (tiny-bert): one energy-aware ranking of attention heads and MLP
units across layers, uniform magnitude pruning as the baseline, reproducible widths and weights, and a
predicted reduction that agrees with the MACs counted on the pruned model. Seconds in all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from toolchain.data.dataset import DataOptions, Dataset
from toolchain.model.data import load_dataset_for
from toolchain.model.load import load_model
from toolchain.prune import PruneConfig, prune_model, transformer_units
from toolchain.prune.units import unit_modules

LAYERS = ("encoder.layer.0", "encoder.layer.1")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bert():
    """tiny-bert (2 layers, 4 heads, MLP 128, random weights) and 40 random samples: 30 train, 10 eval."""
    loaded = load_model("tiny-bert")
    data = load_dataset_for("random", loaded, DataOptions(samples=40, seq_len=32))
    return loaded, data.take(10, None), data.take(0, 10)


def unit_costs(loaded, attention: float, mlp: float, other: float = 0.01) -> dict[str, float]:
    """A cost table (J per module): every module ``other``; a layer's attention modules ``attention`` in
    all, its MLP modules ``mlp`` in all (spread over the modules the unit owns)."""
    names = {n for n, _ in loaded.module.named_modules()}
    costs = dict.fromkeys(names, other)
    for kind, name in transformer_units(loaded.module):
        owned = [m for m in unit_modules(kind, name) if m in names]
        for m in owned:
            costs[m] = (attention if kind == "heads" else mlp) / len(owned)
    return costs


def energy(**kw) -> PruneConfig:
    base = {"importance": "energy", "target_energy_reduction": 0.5, "finetune_epochs": 0, "max_accuracy_drop": 100.0,
            "round_to": 8, "step": 0.25}
    return PruneConfig(**(base | kw))


def kinds(step) -> set[str]:
    return {label.split()[0].rsplit(".", 1)[1] for label in step.pruned}


def test_energy_aware_cuts_heads_and_mlp_units_in_one_ranking(bert):
    loaded, train, held = bert
    r = prune_model(loaded, energy(), train, held, costs=unit_costs(loaded, 1.0, 1.0))
    assert r.predicted_reduction == pytest.approx(r.reduction) and r.predicted_reduction >= 0.5
    heads = [r.widths[f"{layer}.attention"] for layer in LAYERS]
    mlp = [r.widths[f"{layer}.mlp"] for layer in LAYERS]
    assert min(heads) < 4 and min(mlp) < 128  # both kinds cut
    assert any(kinds(s) == {"attention", "mlp"} for s in r.steps)  # in the same step, from one ranking
    assert all(w % 8 == 0 for w in mlp)  # MLP units in groups of round_to
    assert r.channels["encoder.layer.0.attention.self (heads)"] == (4, heads[0])
    # the model still runs at its new shapes
    block = dict(r.module.named_modules())["encoder.layer.0.attention.self"]
    assert block.all_head_size == block.query.out_features == block.num_attention_heads * block.attention_head_size


def test_costlier_mlp_is_cut_first_and_uniform_cuts_every_layer_alike(bert):
    loaded, train, held = bert
    r = prune_model(loaded, energy(target_energy_reduction=0.3), train, held, costs=unit_costs(loaded, 0.1, 1.0))
    assert kinds(r.steps[0]) == {"mlp"}
    cut_heads = [1 - r.widths[f"{layer}.attention"] / 4 for layer in LAYERS]
    cut_mlp = [1 - r.widths[f"{layer}.mlp"] / 128 for layer in LAYERS]
    assert min(cut_mlp) > max(cut_heads)
    # the same table, uniform magnitude pruning: the same share of every layer's heads and MLP
    uniform = prune_model(loaded, PruneConfig(importance="l2", ratio=0.5, finetune_epochs=0, max_accuracy_drop=100.0,
                                              round_to=8), train, held)
    assert uniform.widths == {f"{layer}.{kind}": w for layer in LAYERS for kind, w in (("attention", 2), ("mlp", 64))}
    stepped = prune_model(loaded, PruneConfig(importance="l2", target_energy_reduction=0.2, finetune_epochs=0,
                                              max_accuracy_drop=100.0, round_to=8, step=0.25), train, held,
                          costs=unit_costs(loaded, 0.1, 1.0))
    assert kinds(stepped.steps[0]) == {"attention", "mlp"}
    assert stepped.widths == {f"{layer}.{kind}": w for layer in LAYERS for kind, w in (("attention", 3), ("mlp", 96))}


def test_same_seed_same_widths_and_weights(bert):
    """Taylor scores (seeded projections without labels) and fine-tuning (seeded) are reproducible."""
    loaded, train, held = bert
    config = energy(unit_importance="taylor", finetune_epochs=1, seed=3)
    a = prune_model(loaded, config, train, held, costs=unit_costs(loaded, 1.0, 2.0))
    b = prune_model(loaded, config, train, held, costs=unit_costs(loaded, 1.0, 2.0))
    assert a.widths == b.widths and [s.pruned for s in a.steps] == [s.pruned for s in b.steps]
    sa, sb = a.module.state_dict(), b.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.final_metric == b.final_metric


def test_predicted_reduction_agrees_with_macs_counted(bert):
    """With costs proportional to each module's MACs (the attention matmuls included), the prediction is
    the MACs counted on the pruned model."""
    from toolchain.prune import count_macs, example_args
    from toolchain.prune.costs import module_work

    loaded, train, held = bert
    example = example_args(loaded, held)
    work = module_work(loaded, loaded.module, example)
    linear = {n for n, m in loaded.module.named_modules() if isinstance(m, torch.nn.Linear)}
    seq = example[0].shape[1]
    costs = {n: float(work[n]) for n in linear if n in work}
    for kind, name in transformer_units(loaded.module):
        if kind == "heads":  # Q K^T and softmax V: 2 x seq x (seq x heads x head size)
            costs[name] = float(2 * seq * work[name])
    assert sum(costs.values()) == pytest.approx(count_macs(loaded, loaded.module, example))
    costs["embeddings"] = 0.0
    r = prune_model(loaded, energy(target_energy_reduction=0.4), train, held, costs=costs)
    assert r.macs_reduction == pytest.approx(1 - r.macs_after / r.macs_before)
    assert r.predicted_reduction == pytest.approx(r.macs_reduction, abs=0.02)
    assert all(s.macs is not None for s in r.steps) and r.steps[-1].macs == r.macs_after


def test_sequence_classification_uses_accuracy_and_labels(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "clf")
    loaded = load_model(str(tmp_path / "clf"))
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 200, (48, 16)).astype(np.int64),
             "attention_mask": np.ones((48, 16), np.int64), "token_type_ids": np.zeros((48, 16), np.int64)}
    data = Dataset("random labelled", {s.name: feeds[s.name] for s in loaded.inputs}, rng.integers(0, 3, 48))
    r = prune_model(loaded, energy(unit_importance="taylor", finetune_epochs=1), data.take(16, None), data.take(0, 16),
                    costs=unit_costs(loaded, 1.0, 1.0))
    assert r.metric_name == "accuracy %"
    assert r.widths["bert.encoder.layer.0.mlp"] <= 64 and r.reduction >= 0.5
    assert r.module(**{k: torch.as_tensor(v[:2]) for k, v in data.feeds.items()}).logits.shape == (2, 3)


def test_pruned_json_records_widths_and_both_reductions(bert, tmp_path):
    """Through the job (a cost table file checked against the model and the target): pruned.json holds
    the widths, the predicted reduction and the MACs reduction, and the directory reloads to the same
    model."""
    from toolchain.formats.costs import CostTable, LayerCost
    from toolchain.prune import PruneJob, run_prune

    loaded, _, _ = bert
    rows = [LayerCost(module=m, module_type="", onnx_nodes=[], kernels=1, op_types=[], latency_ms_mean=c,
                      latency_ms_std=0.0, share=0.0, energy_j_mean=c, energy_j_std=0.0, macs=0, params=0, bytes_moved=0)
            for m, c in sorted(unit_costs(loaded, 1.0, 1.0).items())]
    table = CostTable(model={"source_hash": loaded.source_hash}, target={"name": "x86-cpu"},
                      meter={"name": "estimate", "kind": "estimated"}, measurement={}, profile={}, rows=rows,
                      versions={})
    (tmp_path / "costs.json").write_text(table.to_json())
    out = tmp_path / "pruned"
    report = run_prune(PruneJob(model="tiny-bert", eval_spec="random", output=str(out), target_energy_reduction=0.4,
                                costs=str(tmp_path / "costs.json"), target_spec="x86-cpu", samples=40,
                                finetune_epochs=0, max_accuracy_drop=100.0, step=0.25, seed=1))
    assert report.config.round_to == 8 and report.config.seed == 1
    saved = json.loads((out / "pruned.json").read_text())["result"]
    assert saved["widths"] == report.result.widths and set(saved["widths"]) == {
        f"{layer}.{kind}" for layer in LAYERS for kind in ("attention", "mlp")}
    assert saved["predicted_reduction"] >= 0.4 and 0 < saved["macs_reduction"] < 1
    reloaded = load_model(str(out))
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        a = reloaded.module(**feeds).last_hidden_state
        b = report.result.module(**feeds).last_hidden_state
    assert torch.allclose(a, b)


def test_reprofile_rebases_the_prediction(bert):
    """Hardware in the loop on a transformer: a re-measure (here: each Linear's MACs) after every kept step
    replaces the costs the next step's ranking and prediction start from."""
    from toolchain.prune import example_args
    from toolchain.prune.costs import module_work

    loaded, train, held = bert
    example = example_args(loaded, held)
    linear = {n for n, m in loaded.module.named_modules() if isinstance(m, torch.nn.Linear)}

    def measure(module) -> dict[str, float]:
        return {k: float(v) for k, v in module_work(loaded, module, example).items() if k in linear}

    r = prune_model(loaded, energy(target_energy_reduction=0.4, reprofile_every=1), train, held, costs=measure(loaded.module),
                    reprofile=measure)
    kept = [s for s in r.steps if s.kept]
    assert kept and all(s.measured_reduction is not None for s in kept) and r.reduction_kind == "measured"
    assert r.reduction >= 0.4 and r.predicted_reduction == pytest.approx(r.reduction, abs=0.05)
