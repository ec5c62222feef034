"""Structured pruning on Torch-Pruning's dependency graph, with measured cost tables deciding what is cut.

Two ways to choose what to cut, at the same accuracy budget:

* **magnitude** (``--importance l1|l2|taylor``): every prunable layer loses the same share of its
  channels a step at a time (channels ranked by L1/L2 norm, or by first-order Taylor importance);
* **energy** (``--importance energy``): the energy-aware method of the structural-pruning paper. Per
  layer group the index ``I = beta * dE/E_total - alpha * dW/W`` trades the energy a step would save
  (from the target's cost table: ``E_l(dense) - E_l(sparse)``, the sparse cost predicted by the MACs the
  step leaves) against the share of the group's weight norm it removes; each step prunes the group with
  the highest index (energy per unit of importance); the best ``trials`` by that index are tried on
  copies, and the one that saves the most energy per point of accuracy lost wins (NetAdapt). Its
  Algorithm 1: baseline accuracy and cost table, prune a step, fine-tune briefly, evaluate, roll the step
  back when accuracy falls below the budget (the group is then frozen; ``patience`` rollbacks in a row
  stop), re-profile every ``reprofile_every`` steps on the target, until the energy target is met.

Pruned models are saved as plain tensors (``weights.pt``, loadable with ``weights_only=True``) plus
``pruned.json`` (the original model's source and hash, and every pruned module's new shape); loading
rebuilds the original architecture and re-shapes it, so no pickled code is ever loaded.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.formats.pruned import FORMAT, FORMAT_VERSION, PRUNED_FILE, WEIGHTS_FILE

IMPORTANCES = ("l1", "l2", "taylor", "energy")
# structural attributes re-applied when a pruned model is rebuilt
_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
          "normalized_shape", "num_attention_heads", "attention_head_size", "all_head_size", "num_heads",
          "head_dim", "embed_dim", "hidden_size")


@dataclass
class PruneConfig:
    """What to prune and when to stop. Exactly one of ``ratio`` (uniform channel ratio, one shot),
    ``target_energy_reduction`` or ``target_latency_reduction`` (fractions, from the cost table)."""

    importance: str = "l2"
    ratio: float | None = None
    target_energy_reduction: float | None = None
    target_latency_reduction: float | None = None
    max_accuracy_drop: float = 1.0  # points of accuracy (or of cosine x 100 for models without labels)
    step: float = 0.1  # share of a group's channels cut per step
    alpha: float = 1.0  # weight of the importance removed
    beta: float = 1.0  # weight of the energy saved
    finetune_epochs: int = 1
    lr: float | None = None  # None: 1e-4, or 5e-5 for transformers (a trained model: small steps)
    batch_size: int = 64
    round_to: int | None = None
    exclude: tuple[str, ...] = ()
    max_steps: int = 40
    trials: int = 3  # energy: candidates tried on copies each step (NetAdapt)
    patience: int = 3  # energy: consecutive rolled-back steps before stopping
    reprofile_every: int = 0
    seed: int = 0

    def validate(self) -> None:
        if self.importance not in IMPORTANCES:
            raise ToolchainError(f"unknown importance {self.importance!r}", hint=f"choose one of {', '.join(IMPORTANCES)}")
        targets = [x for x in (self.ratio, self.target_energy_reduction, self.target_latency_reduction) if x is not None]
        if len(targets) != 1:
            raise ToolchainError("give exactly one of --ratio, --target-energy-reduction, --target-latency-reduction")
        for name in ("ratio", "target_energy_reduction", "target_latency_reduction"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ToolchainError(f"--{name.replace('_', '-')} {value} is out of range: it is a fraction in (0, 1), "
                                     "e.g. 0.3 for 30%")
        if self.importance == "energy" and self.ratio is not None:
            raise ToolchainError("--importance energy chooses per-layer ratios from the cost table",
                                 hint="give --target-energy-reduction or --target-latency-reduction instead of --ratio")
        if not 0 < self.step < 1:
            raise ToolchainError(f"--step {self.step} is out of range (0, 1)")
        if self.round_to is not None and self.round_to < 1:
            raise ToolchainError(f"--round-to {self.round_to} must be a positive integer")


@dataclass
class StepRecord:
    step: int
    pruned: list[str]
    kept: bool
    accuracy: float
    params: int
    predicted_reduction: float
    measured_reduction: float | None = None
    seconds: float = 0.0


@dataclass
class PruneResult:
    module: Any
    base_metric: float
    final_metric: float
    metric_name: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    reduction: float  # of the cost table's energy (or latency), predicted or last measured
    reduction_kind: str
    steps: list[StepRecord] = field(default_factory=list)
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("module", "steps")}
        d["steps"] = [asdict(s) for s in self.steps]
        return d


# ---------------------------------------------------------------------------------------------- helpers


def _wrapper(loaded, module):
    from dataclasses import replace

    from toolchain.model.forward import export_module

    return export_module(replace(loaded, module=module))


def example_args(loaded, data) -> tuple:
    import torch

    first = next(data.batches(2))
    return tuple(torch.as_tensor(first[s.name]) for s in loaded.inputs)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_work(loaded, module, example) -> dict[str, int]:
    """Per module (every one, containers too), the work its cost scales with for one sample:
    multiply-accumulates for Conv and Linear layers, output elements for everything else (activations,
    pooling, normalisation, attention). Recorded with forward hooks on the example."""
    import torch
    from torch import nn

    work: dict[str, int] = {}

    def hook(name):
        def record(m, inputs, output):
            out = output[0] if isinstance(output, tuple | list) else output
            if not isinstance(out, torch.Tensor):
                return
            per_sample = out.numel() // max(out.shape[0], 1) if out.dim() else 1
            if isinstance(m, nn.Conv2d | nn.Conv1d):
                per_sample *= (m.in_channels // m.groups) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear):
                per_sample *= m.in_features
            work[name] = work.get(name, 0) + per_sample
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()]
    try:
        with torch.no_grad():
            _wrapper(loaded, module)(*[x[:1] for x in example])
    finally:
        for h in handles:
            h.remove()
    return work


def count_macs(loaded, module, example) -> int:
    """Multiply-accumulates of Conv and Linear layers for one sample."""
    from torch import nn

    layers = {n for n, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)}
    return sum(v for k, v in module_work(loaded, module, example).items() if k in layers)


def output_layer(module) -> str | None:
    """The last Conv/Linear layer in module order: the classifier head, left alone by default."""
    from torch import nn

    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d):
            last = name
    return last


def _groups(loaded, module, example, ignored: list) -> list[tuple[Any, Any]]:
    """(root layer, pruning group) for every prunable group, via Torch-Pruning's dependency graph."""
    import torch_pruning as tp
    from torch import nn

    wrapper = _wrapper(loaded, module)
    dg = tp.DependencyGraph().build_dependency(wrapper, example_inputs=example, output_transform=_sum_outputs)
    out = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Conv1d, nn.Linear]):
        root = group[0].dep.target.module
        out.append((root, group))
    return out


def _names(module) -> dict[Any, str]:
    return {m: n for n, m in module.named_modules()}


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def apply_pruning(loaded, module, example, ratios: dict[Any, float] | float, ignored: list, config: PruneConfig,
           grads: Callable[[Any], None] | None) -> None:
    """One Torch-Pruning step: ``ratios`` per root layer (others untouched), or one ratio for every layer."""
    import torch_pruning as tp

    wrapper = _wrapper(loaded, module)
    if grads is not None:
        grads(module)
    kwargs: dict[str, Any] = {"pruning_ratio": ratios} if isinstance(ratios, float) else {
        "pruning_ratio": 0.0, "pruning_ratio_dict": ratios}
    pruner = tp.pruner.BasePruner(wrapper, example, importance=_importance(config.importance), ignored_layers=ignored,
                                  round_to=config.round_to, global_pruning=False, output_transform=_sum_outputs,
                                  **kwargs)
    pruner.step()
    module.zero_grad(set_to_none=True)


def _sum_outputs(out):
    return sum(o.float().sum() for o in out) if isinstance(out, tuple | list) else out.float().sum()


# ---------------------------------------------------------------------------------------------- transformers
# BERT-family encoders (MiniLM): whole attention heads (query/key/value rows of a head, the output
# projection's columns) and MLP width (intermediate rows, output columns) are cut; the residual width
# stays. Units are ("heads", layer path) and ("mlp", layer path).


def attention_blocks(module) -> dict[str, Any]:
    """Self-attention modules with ``num_attention_heads`` and query/key/value projections, by path."""
    return {n: m for n, m in module.named_modules()
            if hasattr(m, "num_attention_heads") and all(hasattr(m, k) for k in ("query", "key", "value"))}


def _mlp_layers(module) -> dict[str, Any]:
    return {n: m for n, m in module.named_modules() if n.endswith("intermediate.dense")}


def transformer_units(module) -> list[tuple[str, str]]:
    units = [("heads", n) for n, m in attention_blocks(module).items() if m.num_attention_heads > 1]
    units += [("mlp", n) for n, m in _mlp_layers(module).items() if m.out_features > 8]
    return units


def _unit_modules(kind: str, name: str) -> list[str]:
    """Module paths whose cost a unit's width scales (for the cost table)."""
    if kind == "heads":  # .../attention/self -> its projections, itself, and .../attention/output/dense
        parent = name.rsplit(".", 1)[0]
        return [name, f"{name}.query", f"{name}.key", f"{name}.value", f"{parent}.output.dense"]
    layer = name.rsplit(".", 2)[0]  # .../intermediate/dense -> the layer
    return [name, f"{layer}.intermediate", f"{layer}.intermediate.intermediate_act_fn", f"{layer}.output.dense"]


def _unit_importance_removed(module, kind: str, name: str, step: float) -> float:
    """Share of the unit's weight norm (heads: per head, over q/k/v rows) a step would remove."""
    import torch

    m = dict(module.named_modules())[name]
    if kind == "heads":
        w = torch.cat([getattr(m, k).weight.detach() for k in ("query", "key", "value")], dim=1)
        scores = w.view(m.num_attention_heads, -1).norm(dim=1)
    else:
        scores = m.weight.detach().norm(dim=1)
    return _smallest_share(scores, max(1, round(step * len(scores))))


def prune_transformer_units(loaded, module, example, units: list[tuple[str, str]], config: PruneConfig) -> None:
    """Cut a step of heads / MLP width from ``units`` with Torch-Pruning, then fix the attention modules'
    head counts so the model still runs and exports."""
    import torch_pruning as tp

    wrapper = _wrapper(loaded, module)
    mods = dict(module.named_modules())
    blocks = attention_blocks(module)
    num_heads = {getattr(b, k): b.num_attention_heads for b in blocks.values() for k in ("query", "key", "value")}
    ratios: dict[Any, float] = {}
    head_ratios: dict[Any, float] = {}
    for kind, name in units:
        if kind == "heads":
            b = blocks[name]
            ratios[b.query] = 1e-6  # a scope of its own, so Torch-Pruning visits the group; heads decide the cut
            for k in ("query", "key", "value"):
                head_ratios[getattr(b, k)] = config.step
        else:
            ratios[mods[name]] = config.step
    pruner = tp.pruner.BasePruner(wrapper, example, importance=_importance(config.importance), pruning_ratio=0.0,
                                  pruning_ratio_dict=ratios, num_heads=num_heads, prune_num_heads=True,
                                  prune_head_dims=False, head_pruning_ratio_dict=head_ratios or None,
                                  round_to=config.round_to, global_pruning=False, output_transform=_sum_outputs)
    pruner.step()
    for b in blocks.values():
        b.num_attention_heads = pruner.num_heads[b.query]
        b.all_head_size = b.query.out_features
        b.attention_head_size = b.query.out_features // b.num_attention_heads
    module.zero_grad(set_to_none=True)


def _channels(module) -> dict[str, int]:
    from torch import nn

    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    for name, b in attention_blocks(module).items():
        out[f"{name} (heads)"] = b.num_attention_heads
    return out


# ---------------------------------------------------------------------------------------------- costs


def costs_for(table, loaded, module, target_name: str | None, metric: str) -> dict[str, float]:
    """Per-module cost (J or ms) from a cost table, after checking that the table belongs to this model
    (its source hash and module names) and this target. A stale or foreign table is refused."""
    src = table.model.get("source_hash")
    if src and src != loaded.source_hash:
        raise ToolchainError(f"the cost table was measured on another model (source hash {src[:12]}..., this model "
                             f"{loaded.source_hash[:12]}...): it is stale or foreign",
                             hint="profile this model's export with `toolchain profile` and pass that table")
    if target_name and table.target.get("name") != target_name:
        raise ToolchainError(f"the cost table was measured on target {table.target.get('name')!r}, not {target_name!r}",
                             hint="profile on the target you prune for")
    names = {n for n, _ in module.named_modules()}
    rows = {r.module: (r.energy_j_mean if metric == "energy" else r.latency_ms_mean) for r in table.rows}
    unknown = [m for m in rows if m and m not in names and m != "(unmapped)"]
    if unknown:
        raise ToolchainError(f"the cost table names modules this model does not have ({', '.join(unknown[:3])}): "
                             "it was measured on another architecture or an already-pruned model",
                             hint="profile the model you are pruning")
    return rows


def _importance_removed(group, step: float) -> float:
    import torch_pruning as tp

    scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
    if scores is None or len(scores) == 0:
        return 1.0
    return _smallest_share(scores, max(1, round(len(scores) * step)))


def _smallest_share(scores, k: int) -> float:
    """Share of the total score held by the ``k`` smallest scores (what cutting them removes)."""
    s = scores.sort().values
    return float(s[:k].sum() / s.sum()) if float(s.sum()) > 0 else 1.0


# ---------------------------------------------------------------------------------------------- main loop


def prune_model(loaded, config: PruneConfig, train_data, eval_data, *, costs: dict[str, float] | None = None,
                reprofile: Callable[[Any], dict[str, float]] | None = None,
                progress: Callable[[str], None] | None = None,
                on_kept: Callable[[StepRecord, Any], None] | None = None) -> PruneResult:
    """Prune ``loaded.module`` (a copy; the original is untouched) under ``config``.

    ``costs`` (module -> J or ms per inference, from :func:`costs_for`) is needed for the energy method
    and for target reductions; ``reprofile(module)`` re-measures them on the target; ``on_kept(step,
    module)`` sees the model after every kept step (the pipeline's scheduler picks among them)."""
    from toolchain.training import evaluate, outputs, train

    config.validate()
    module = copy.deepcopy(loaded.module).eval()
    example = example_args(loaded, eval_data)
    names_all = {n for n, _ in module.named_modules()}
    unknown = [n for n in config.exclude if n not in names_all]
    if unknown:
        raise ToolchainError(f"no layer named {unknown[0]!r} in this model",
                             hint="layer names are module paths like features.0 (see `toolchain inspect` of its export)")
    if config.importance == "energy" or config.ratio is None:
        if not costs:
            raise ToolchainError("this needs a cost table of the model on the target",
                                 hint="profile its export: `toolchain profile model.onnx --target T -o costs/`, then "
                                      "pass --costs costs/costs.json")
    head = output_layer(module)
    ignored_names = (*config.exclude, *([head] if head else []))

    def ignored(m) -> list:  # looked up again each step: a rollback swaps the module object
        found = dict(m.named_modules())
        return [found[n] for n in ignored_names]
    transformer = bool(attention_blocks(module))
    # accuracy where the model has logits for the labels; else (embeddings) cosine to the unpruned outputs
    labelled = eval_data.labels is not None and evaluate(loaded, module, eval_data).accuracy is not None
    reference = None if labelled else outputs(loaded, loaded.module, eval_data)

    def metric(m) -> float:
        r = evaluate(loaded, m, eval_data, reference=reference)
        return 100 * (r.accuracy if labelled else r.cosine)
    # below one evaluation sample's worth, an accuracy difference is noise
    eval_floor = max(0.05, 100 / len(eval_data)) if labelled else 0.05

    grads = None
    if config.importance == "taylor":
        if not labelled:
            raise ToolchainError("--importance taylor needs labelled data (it differentiates the loss)")
        grads = _taylor_grads(loaded, train_data)

    base = metric(module)
    params0, macs0 = count_params(module), count_macs(loaded, module, example)
    channels0 = _channels(module)
    total0 = sum(costs.values()) if costs else 0.0
    current = dict(costs or {})
    steps: list[StepRecord] = []
    goal = config.target_energy_reduction or config.target_latency_reduction

    lr = config.lr or (5e-5 if transformer else 1e-4)

    def finetune(m) -> None:
        if config.finetune_epochs > 0:
            train(loaded, m, train_data, epochs=config.finetune_epochs, lr=lr,
                  batch_size=min(config.batch_size, 16) if transformer else config.batch_size,
                  seed=config.seed, teacher=None if labelled else loaded.module,
                  teacher_loaded=None if labelled else loaded)

    def reduction() -> float:
        return 1 - sum(current.values()) / total0 if total0 else 0.0

    measured: float | None = None
    baseline_measured = 0.0
    if reprofile and config.reprofile_every and config.ratio is None:
        # the unpruned model measured by the same re-profiler, now: the cost table may come from another
        # time (machine state) or meter settings, and a reduction is only meaningful against a like figure
        if progress:
            progress("re-measuring the unpruned model on the target")
        baseline_measured = sum(reprofile(loaded.module).values())
    if config.ratio is not None:  # one shot, uniform
        if transformer:
            prune_transformer_units(loaded, module, example, transformer_units(module),
                               PruneConfig(**{**asdict(config), "step": config.ratio}))
        else:
            apply_pruning(loaded, module, example, float(config.ratio), ignored(module), config, grads)
        finetune(module)
        acc = metric(module)
        steps.append(StepRecord(1, ["all"], True, acc, count_params(module), reduction()))
    else:
        frozen: set[str] = set()
        rollbacks = 0
        now = base
        for step_no in range(1, config.max_steps + 1):
            if reduction() >= goal or rollbacks >= config.patience:
                break
            started = time.perf_counter()
            snapshot = copy.deepcopy(module)
            if config.importance == "energy":
                picked = _netadapt_step(loaded, module, example, config, current, total0, frozen, ignored, grads,
                                        metric, now, eval_floor)
                if picked is None:
                    break
                chosen, module, predicted = [picked[0]], picked[1], picked[2]
            else:
                before = module_work(loaded, module, example)
                if transformer:
                    prune_transformer_units(loaded, module, example, [u for u in transformer_units(module)
                                                                 if not set(_unit_modules(*u)) & set(config.exclude)],
                                       config)
                else:
                    apply_pruning(loaded, module, example, float(config.step), ignored(module), config, grads)
                chosen = ["all"]
                after = module_work(loaded, module, example)
                if after == before:
                    break  # round_to or minimum sizes: nothing left to cut
                predicted = predict_costs(current, before, after)
            if progress:
                progress(f"step {step_no}: pruned {', '.join(chosen)}; fine-tuning")
            finetune(module)
            acc = metric(module)
            kept = base - acc <= config.max_accuracy_drop
            if kept:
                current, now, rollbacks = predicted, acc, 0
                if reprofile and config.reprofile_every and step_no % config.reprofile_every == 0:
                    if progress:
                        progress(f"step {step_no}: re-measuring on the target")
                    fresh = reprofile(module)  # hardware in the loop: measured, same target and meter
                    measured = 1 - sum(fresh.values()) / baseline_measured if baseline_measured else None
                    scale = total0 / baseline_measured if baseline_measured else 1.0  # in the table's units
                    current = {k: v * scale for k, v in fresh.items()}
            else:
                module = snapshot
                frozen.update(chosen)
                rollbacks += 1
                if config.importance != "energy":
                    rollbacks = config.patience  # uniform pruning has nothing else to try
            steps.append(StepRecord(step_no, chosen, kept, acc, count_params(module), reduction(), measured,
                                    time.perf_counter() - started))
            if kept and on_kept:
                on_kept(steps[-1], module)
    final = metric(module)
    channels1 = _channels(module)
    return PruneResult(module=module.eval(), base_metric=base, final_metric=final,
                       metric_name="accuracy %" if labelled else "cosine x 100",
                       params_before=params0, params_after=count_params(module), macs_before=macs0,
                       macs_after=count_macs(loaded, module, example), reduction=reduction(),
                       reduction_kind="predicted from the cost table" if measured is None else "measured",
                       steps=steps, channels={k: (channels0[k], channels1.get(k, 0)) for k in channels0})


def predict_costs(current: dict[str, float], before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Per-module costs after a step, predicted: each module's cost scales with its work
    (:func:`module_work`: MACs of a layer, output elements of a pooling, activation or attention block),
    so a pooling after a pruned convolution, or the attention scores of fewer heads, shrink with it."""
    return {name: cost * after.get(name, 0) / before[name] if before.get(name) else cost
            for name, cost in current.items()}


def _netadapt_step(loaded, module, example, config: PruneConfig, current: dict[str, float], total0: float,
                   frozen: set[str], ignored, grads, metric, now: float, floor: float):
    """One energy-aware step (NetAdapt, with the paper's index). Every candidate -- a layer group, or the
    heads / MLP width of one transformer layer -- is sized to save the same energy, ``config.step`` of the
    model's current cost by the cost table (channels a probe cut saves, scaled); the index
    ``beta * dE/E - alpha * dW/W`` (energy saved against the share of the group's weight norm removed)
    ranks them, the best ``config.trials`` are cut on copies and evaluated, and the one that loses the least
    accuracy per joule saved wins. Returns (label, pruned copy, predicted costs), or None."""
    from dataclasses import replace

    total = sum(current.values())
    goal = config.step * total
    work0 = module_work(loaded, module, example)
    units: list[tuple[str, str, Callable[[Any, float], None], Callable[[float], float]]] = []
    if attention_blocks(module):
        for kind, name in transformer_units(module):
            label = f"{kind}:{name}"
            if label in frozen or set(_unit_modules(kind, name)) & set(config.exclude):
                continue
            units.append((label, f"{name} (heads)" if kind == "heads" else name,
                          lambda m, r, u=(kind, name): prune_transformer_units(loaded, m, example, [u],
                                                                          replace(config, step=r)),
                          lambda r, u=(kind, name): _unit_importance_removed(module, *u, r)))
    else:
        plain = {k: v.removeprefix("model.") for k, v in _names(_wrapper(loaded, module)).items()}
        for root, group in _groups(loaded, module, example, ignored(module)):
            label = plain.get(root, "")
            if not label or label in frozen:
                continue

            def apply(m, r, label=label) -> None:
                apply_pruning(loaded, m, example, {dict(_wrapper(loaded, m).named_modules())["model." + label]: r},
                       ignored(m), config, grads)
            units.append((label, label, apply, lambda r, g=group: _importance_removed(g, r)))

    sizes = _channels(module)
    candidates = []
    for label, key, apply, removed_share in units:
        size = sizes[key]
        trial = copy.deepcopy(module)
        apply(trial, config.step)  # a probe: the smallest cut round_to allows near one step
        cut = size - _channels(trial).get(key, size)
        if cut <= 0:  # round_to or minimum sizes: nothing left to cut there
            frozen.add(label)
            continue
        predicted = predict_costs(current, work0, module_work(loaded, trial, example))
        per_unit = (total - sum(predicted.values())) / cut
        need = math.ceil(goal / per_unit) if per_unit > 0 else cut
        keep = max(config.round_to or 1, 1)
        if need > cut and size - cut > keep:
            ratio = min(need, size - keep) / size
            trial = copy.deepcopy(module)
            apply(trial, ratio)
            cut = size - _channels(trial).get(key, size)
            predicted = predict_costs(current, work0, module_work(loaded, trial, example))
        saved = total - sum(predicted.values())
        index = config.beta * saved / total0 - config.alpha * removed_share(cut / size)
        candidates.append((index, label, trial, predicted, saved))
    candidates.sort(key=lambda c: c[0], reverse=True)
    best = None
    for _, label, trial, predicted, saved in candidates[:max(1, config.trials)]:
        lost = max(now - metric(trial), 0.0)
        score = saved / (lost + floor)
        if best is None or score > best[0]:
            best = (score, label, trial, predicted)
    return None if best is None else best[1:]


def _taylor_grads(loaded, data) -> Callable[[Any], None]:
    def compute(module) -> None:
        import torch

        from toolchain.training import forward, to_torch

        module.zero_grad(set_to_none=True)
        module.train()
        batch = next(data.batches(64))
        labels = torch.as_tensor(data.labels[:len(next(iter(batch.values())))])
        loss = torch.nn.functional.cross_entropy(forward(loaded, module, to_torch(batch)), labels)
        loss.backward()
        module.eval()

    return compute


# ---------------------------------------------------------------------------------------------- save / load


def save_pruned(result: PruneResult, loaded, source_spec: str, out_dir: str | Path, config: PruneConfig,
                extra: dict[str, Any], force: bool = False) -> list[Path]:
    """``out_dir/weights.pt`` (tensors only) and ``out_dir/pruned.json``, written atomically."""
    import io

    import torch

    from toolchain.core.fsio import write_files

    module = result.module
    shapes = {}
    original = dict(loaded.module.named_modules())
    for name, m in module.named_modules():
        before = original.get(name)
        attrs = {a: _jsonable(getattr(m, a)) for a in _ATTRS if hasattr(m, a) and isinstance(getattr(m, a), int | tuple)}
        if before is not None and any(getattr(before, a, None) != getattr(m, a) for a in attrs):
            shapes[name] = attrs
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, buf)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": source_spec, "source_hash": loaded.source_hash,
            "source_kind": loaded.kind, "task": loaded.task, "modules": shapes, "config": asdict(config),
            "result": result.to_dict(), **extra}
    return write_files({WEIGHTS_FILE: buf.getvalue(), PRUNED_FILE: json.dumps(meta, indent=2)}, out_dir, force)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


# ---------------------------------------------------------------------------------------------- command


def run_prune_command(*, model: str, ratio, target_energy_reduction, target_latency_reduction, importance: str,
                      costs: str | None, target_spec: str | None, eval_spec: str, train_spec: str | None, samples: int,
                      max_accuracy_drop: float, step: float, alpha: float, beta: float, finetune_epochs: int,
                      lr: float | None, round_to: int | None, exclude: tuple[str, ...], reprofile_every: int,
                      meter: str | None, max_steps: int, weights: str | None, input_shapes: list[str],
                      output: str, force: bool, trials: int = 3, patience: int = 3,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """What ``toolchain prune`` does: load, check the cost table, prune, save; returns the report."""

    from toolchain.data.dataset import DataOptions
    from toolchain.formats.costs import CostTable
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model

    config = PruneConfig(importance=importance, ratio=ratio, target_energy_reduction=target_energy_reduction,
                         target_latency_reduction=target_latency_reduction, max_accuracy_drop=max_accuracy_drop,
                         step=step, alpha=alpha, beta=beta, finetune_epochs=finetune_epochs, lr=lr,
                         round_to=round_to, exclude=exclude, max_steps=max_steps, reprofile_every=reprofile_every,
                         trials=trials, patience=patience)
    config.validate()
    out = Path(output)
    if (out / PRUNED_FILE).exists() and not force:
        raise ToolchainError(f"{out / PRUNED_FILE} already exists", hint="pass --force to overwrite it")
    target = None
    if target_spec:
        from toolchain.targets.target import load_target

        target = load_target(target_spec)
        if config.round_to is None:
            config.round_to = target.round_to
    loaded = load_model(model, weights=weights, input_shapes=input_shapes or None)
    if out.resolve() in [Path(p).resolve() for p in loaded.input_paths]:
        raise ToolchainError(f"{output}: refusing to overwrite an input; choose another -o")
    metric = "latency" if target_latency_reduction is not None else "energy"
    table = per_module = None
    if costs:
        table = CostTable.load(costs)
        per_module = costs_for(table, loaded, module=loaded.module, target_name=target.name if target else None,
                               metric=metric)
    data = load_dataset_for(eval_spec, loaded, DataOptions(samples=samples))
    if train_spec:
        train_data, eval_data = load_dataset_for(train_spec, loaded, DataOptions(samples=samples)), data
    else:
        held = max(1, len(data) // 4)
        train_data, eval_data = data.take(held, None), data.take(0, held)
    reprofile = None
    if reprofile_every:
        if target is None or table is None:
            raise ToolchainError("--reprofile-every needs --target and --costs (it re-measures there)")
        reprofile = _reprofiler(loaded, target, meter or table.meter.get("name"), metric, eval_spec)
    result = prune_model(loaded, config, train_data, eval_data, costs=per_module, reprofile=reprofile,
                         progress=progress)
    extra = {"weights": weights, "input_shapes": input_shapes or None, "target": target.name if target else None,
             "costs": {"path": str(costs), "model_sha256": table.model.get("sha256"), "meter": table.meter,
                       "method": table.method} if table else None,
             "data": {"eval": eval_spec, "train": train_spec, "samples": samples}}
    files = save_pruned(result, loaded, model, out, config, extra, force=force)
    return {"source": model, "importance": importance, "max_accuracy_drop": max_accuracy_drop, "cost_metric": metric,
            "costs": str(costs) if costs else None, "target": extra["target"], "config": asdict(config),
            "result": result.to_dict(), "files": [str(f) for f in files]}


def _reprofiler(loaded, target, meter: str | None, metric: str, data_spec: str):
    """Export the pruned module, profile it on ``target``, and return its per-module costs."""
    import tempfile
    from dataclasses import replace

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.profile.run import ProfileOptions, profile_model

    def measure(module) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="toolchain-reprofile-") as tmp:
            path = Path(tmp) / "pruned.onnx"
            export_model(replace(loaded, module=module), path, ExportOptions(parity=False))
            table = profile_model(path, target, ProfileOptions(meter=meter, repeats=3, profile_runs=10,
                                                               data=data_spec if data_spec.startswith("builtin:") else None))
        return {r.module: (r.energy_j_mean if metric == "energy" else r.latency_ms_mean) for r in table.rows}

    return measure
