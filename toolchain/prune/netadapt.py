"""The pruning loop (the structural-pruning paper's Algorithm 1) and its energy-aware step (NetAdapt).

:func:`prune_model`: baseline metric and cost table; then cut a step, fine-tune briefly, evaluate, and
roll the step back when the metric falls below the budget (the group is then frozen; ``patience``
rollbacks in a row stop), re-measuring every ``reprofile_every`` kept steps on the target, until the
cost target is met. Two ways to choose a step's cut:

* **magnitude** (``l1``, ``l2``, ``taylor``, any criterion of
  :data:`~toolchain.prune.importance.IMPORTANCES` but ``energy``): every prunable layer loses the same
  share of its channels (a ``ratio`` in one shot, or ``step`` a step);
* **energy** (:func:`_netadapt_step`): per layer group the index ``I = beta * dE/E_total - alpha * dW/W``
  trades the energy a cut would save (cost table, :func:`~toolchain.prune.costs.predict_costs`) against
  the share of the group's weight norm it removes; the best ``trials`` by the index are cut on copies
  and the one saving the most energy per point of accuracy lost wins.

Transformers (attention heads and MLP width, :mod:`toolchain.prune.unitstep`) take one step per unit
instead: energy-aware, every head and ``round_to`` group of MLP neurons of every layer in one ranking by
importance per unit of predicted cost, cut together once and evaluated once (a rollback halves the next
step); uniform, every layer loses the same share.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError, option
from toolchain.prune.config import PruneConfig, PruneResult, StepRecord
from toolchain.prune.costs import count_macs, count_params, module_work, predict_costs
from toolchain.prune.graph import (
    apply_pruning,
    channel_widths,
    example_args,
    export_wrapper,
    layer_widths,
    module_names,
    output_layer,
    prunable_groups,
)
from toolchain.prune.importance import ENERGY, build_importance, group_importance_removed, needs_gradients
from toolchain.prune.units import attention_blocks
from toolchain.prune.unitstep import UnitStepper

if TYPE_CHECKING:
    from toolchain.model.spec import LoadedModel


def prune_model(loaded: LoadedModel, config: PruneConfig, train_data, eval_data, *,
                costs: dict[str, float] | None = None,
                reprofile: Callable[[Any], dict[str, float]] | None = None,
                progress: Callable[[str], None] | None = None,
                on_kept: Callable[[StepRecord, Any], None] | None = None) -> PruneResult:
    """Prune ``loaded.module`` (a copy; the original is untouched) under ``config``.

    ``costs`` (module path -> J or ms per inference, from :func:`~toolchain.prune.costs.costs_for`) is
    needed for the energy method and for target reductions; ``reprofile(module)`` re-measures them on the
    target (module path -> J or ms, any scale: only ratios to its own unpruned figure are used);
    ``on_kept(step, module)`` sees the model after every kept step (the pipeline's scheduler picks among
    them). The metric is accuracy in percent where the data has labels, else cosine x 100 to the
    unpruned model's outputs."""
    from toolchain.training import evaluate, outputs, train

    config.validate()
    module = copy.deepcopy(loaded.module).eval()
    example = example_args(loaded, eval_data)
    names_all = {n for n, _ in module.named_modules()}
    unknown = [n for n in config.exclude if n not in names_all]
    if unknown:
        raise ToolchainError(f"no layer named {unknown[0]!r} in this model",
                             hint="layer names are module paths like features.0 (see `toolchain inspect` of its export)")
    if config.importance == ENERGY or config.ratio is None:
        if not costs:
            raise ToolchainError("this needs a cost table of the model on the target",
                                 hint=("profile its export: " + option("`toolchain profile model.onnx --target T -o costs/`",
                                                                         "toolchain.profile.run.profile_model")
                                       + ", then pass " + option("--costs costs/costs.json", "its cost table as costs")))
    if costs:
        bad = next(((k, v) for k, v in costs.items() if not math.isfinite(v) or v < 0), None)
        if bad is not None:
            raise ToolchainError(f"the cost of {bad[0] or '(model)'!r} is {bad[1]!r}, not a finite non-negative number",
                                 hint="profile the model again with `toolchain profile`")
        if sum(costs.values()) <= 0:
            raise ToolchainError("the costs are zero for every layer: there is nothing to reduce",
                                 hint="profile the model again with `toolchain profile`")
    head = output_layer(module)
    ignored_names = (*config.exclude, *([head] if head else []))

    def ignored(m) -> list:  # looked up again each step: a rollback swaps the module object
        found = dict(m.named_modules())
        return [found[n] for n in ignored_names]
    transformer = bool(attention_blocks(module))
    started0 = time.perf_counter()
    # accuracy where the model has logits for the labels; else (embeddings) cosine to the unpruned outputs
    first = evaluate(loaded, module, eval_data) if eval_data.labels is not None else None
    labelled = first is not None and first.accuracy is not None
    reference = None if labelled else outputs(loaded, loaded.module, eval_data)

    def metric(m) -> float:
        r = evaluate(loaded, m, eval_data, reference=reference)
        return 100 * (r.accuracy if labelled else r.cosine)
    # below one evaluation sample's worth, an accuracy difference is noise
    eval_floor = max(0.05, 100 / len(eval_data)) if labelled else 0.05

    grads = None
    if not transformer and needs_gradients(build_importance(config.importance)):
        if not labelled:
            raise ToolchainError(f"{option(f'--importance {config.importance}', f'importance={config.importance!r}')} needs labelled data (it differentiates the loss)")
        grads = _loss_gradients(loaded, train_data, config.seed)

    if first is not None and labelled:  # each evaluation is a pass over the data: none twice
        base = 100 * first.accuracy
    else:  # the copy gives the reference's outputs
        import torch

        base = 100 * torch.nn.functional.cosine_similarity(reference, reference, dim=1).mean().item()
    now = base
    params0, macs0 = count_params(module), count_macs(loaded, module, example)
    channels0 = channel_widths(module)
    total0 = sum(costs.values()) if costs else 0.0
    current = dict(costs or {})
    prediction = dict(current)  # the cost table's prediction for the last kept step (before any re-measure)
    steps: list[StepRecord] = []
    goal = config.target_energy_reduction or config.target_latency_reduction

    lr = config.lr or (5e-5 if transformer else 1e-4)
    units = UnitStepper(loaded, module, config, costs, train_data, labelled) if transformer else None

    def finetune(m) -> None:
        if config.finetune_epochs > 0:
            train(loaded, m, train_data, epochs=config.finetune_epochs, lr=lr,
                  batch_size=min(config.batch_size, 16) if transformer else config.batch_size,
                  seed=config.seed, teacher=None if labelled else loaded.module,
                  teacher_loaded=None if labelled else loaded)

    def reduction() -> float:  # of the cost table's metric; without one (uniform --ratio), of MACs
        if not total0:
            return 1 - count_macs(loaded, module, example) / macs0 if macs0 else 0.0
        return 1 - sum(current.values()) / total0

    measured: float | None = None
    baseline_measured = 0.0
    if reprofile and config.reprofile_every and config.ratio is None:
        # the unpruned model measured by the same re-profiler, now: the cost table may come from another
        # time (machine state) or meter settings, and a reduction is only meaningful against a like figure
        if progress:
            progress("re-measuring the unpruned model on the target")
        baseline_measured = sum(reprofile(loaded.module).values())
    if config.ratio is not None:  # one shot, uniform, judged against the budget like every step
        started = time.perf_counter()
        snapshot = copy.deepcopy(module)
        if units is not None:
            units.uniform(module, config.ratio)
            predicted = units.predict(module)
        else:
            before = module_work(loaded, module, example)
            apply_pruning(loaded, module, example, float(config.ratio), ignored(module), config, grads)
            predicted = predict_costs(current, before, module_work(loaded, module, example))
        finetune(module)
        acc = metric(module)
        kept = base - acc <= config.max_accuracy_drop
        if kept:
            current = prediction = predicted
            now = acc
        else:
            module = snapshot
        steps.append(StepRecord(step=1, pruned=["all"], kept=kept, accuracy=acc, params=count_params(module),
                                predicted_reduction=reduction(), seconds=time.perf_counter() - started,
                                macs=count_macs(loaded, module, example)))
    else:
        frozen: set[str] = set()
        rollbacks = 0
        for step_no in range(1, config.max_steps + 1):
            if reduction() >= goal or rollbacks >= config.patience:
                break
            started = time.perf_counter()
            snapshot = copy.deepcopy(module)
            if units is not None:  # transformers: one cut of heads and MLP units, evaluated once
                if config.importance == ENERGY:
                    chosen = units.energy(module, current, total0 * (1 - goal), step_no)
                else:
                    chosen = units.uniform(module, config.step, step_no)
                if not chosen:
                    break  # round_to or minimum sizes: nothing left to cut
                predicted = units.predict(module)
            elif config.importance == ENERGY:
                picked = _netadapt_step(loaded, module, example, config, current, total0, frozen, ignored, grads,
                                        metric, now, eval_floor)
                if picked is None:
                    break
                chosen, module, predicted = [picked[0]], picked[1], picked[2]
            else:
                before = module_work(loaded, module, example)
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
                current, prediction, now, rollbacks = predicted, predicted, acc, 0
                if reprofile and config.reprofile_every and step_no % config.reprofile_every == 0:
                    if progress:
                        progress(f"step {step_no}: re-measuring on the target")
                    fresh = reprofile(module)  # hardware in the loop: measured, same target and meter
                    measured = 1 - sum(fresh.values()) / baseline_measured if baseline_measured else None
                    scale = total0 / baseline_measured if baseline_measured else 1.0  # in the table's units
                    current = {k: v * scale for k, v in fresh.items()}
                    if units is not None:
                        units.rebase(current, module)
            else:
                module = snapshot
                frozen.update(chosen)
                rollbacks += 1
                if units is not None:
                    units.rolled_back()
                if config.importance != ENERGY:
                    rollbacks = config.patience  # uniform pruning has nothing else to try
            steps.append(StepRecord(step=step_no, pruned=chosen, kept=kept, accuracy=acc, params=count_params(module),
                                    predicted_reduction=reduction(), measured_reduction=measured,
                                    seconds=time.perf_counter() - started, macs=count_macs(loaded, module, example)))
            if kept and on_kept:
                on_kept(steps[-1], module)
    final = now  # the metric of the model kept (the last kept step, or the unpruned model)
    channels1 = channel_widths(module)
    macs1 = count_macs(loaded, module, example)
    return PruneResult(module=module.eval(), base_metric=base, final_metric=final,
                       metric_name="accuracy %" if labelled else "cosine x 100",
                       params_before=params0, params_after=count_params(module), macs_before=macs0,
                       macs_after=macs1, reduction=reduction(),
                       reduction_kind=("measured" if measured is not None else "predicted from the cost table" if costs
                                       else "MACs (no cost table)"),
                       steps=steps, channels={k: (channels0[k], channels1.get(k, 0)) for k in channels0},
                       predicted_reduction=1 - sum(prediction.values()) / total0 if total0 else None,
                       macs_reduction=1 - macs1 / macs0 if macs0 else 0.0,
                       widths=layer_widths(module),
                       seconds=time.perf_counter() - started0)


def _netadapt_step(loaded, module, example, config: PruneConfig, current: dict[str, float], total0: float,
                   frozen: set[str], ignored, grads, metric, now: float, floor: float):
    """One energy-aware step on a CNN (NetAdapt, with the paper's index). Every candidate -- a layer
    group -- is sized to save the same energy, ``config.step`` of the
    model's current cost by the cost table (channels a probe cut saves, scaled); the index
    ``beta * dE/E - alpha * dW/W`` (energy saved against the share of the group's weight norm removed)
    ranks them, the best ``config.trials`` are cut on copies and evaluated, and the one that loses the least
    accuracy per joule saved wins. Returns (label, pruned copy, predicted costs), or None."""
    total = sum(current.values())
    goal = config.step * total
    work0 = module_work(loaded, module, example)
    units: list[tuple[str, str, Callable[[Any, float], None], Callable[[float], float]]] = []
    plain = {k: v.removeprefix("model.") for k, v in module_names(export_wrapper(loaded, module)).items()}
    for root, group in prunable_groups(loaded, module, example, ignored(module)):
        label = plain.get(root, "")
        if not label or label in frozen:
            continue

        def apply(m, r, label=label) -> None:
            layer = dict(export_wrapper(loaded, m).named_modules())["model." + label]
            apply_pruning(loaded, m, example, {layer: r}, ignored(m), config, grads)
        units.append((label, label, apply, lambda r, g=group: group_importance_removed(g, r)))

    sizes = channel_widths(module)
    candidates = []
    for label, key, apply, removed_share in units:
        size = sizes[key]
        trial = copy.deepcopy(module)
        apply(trial, config.step)  # a probe: the smallest cut round_to allows near one step
        cut = size - channel_widths(trial).get(key, size)
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
            cut = size - channel_widths(trial).get(key, size)
            predicted = predict_costs(current, work0, module_work(loaded, trial, example))
        saved = total - sum(predicted.values())
        index = config.beta * saved / total0 - config.alpha * removed_share(cut / size)
        candidates.append((index, label, trial, predicted, saved))
    candidates.sort(key=lambda c: (-c[0], c[1]))  # ties by label: not by the graph's group order
    best = None
    for _, label, trial, predicted, saved in candidates[:max(1, config.trials)]:
        lost = max(now - metric(trial), 0.0)
        score = saved / (lost + floor)
        if best is None or score > best[0]:
            best = (score, label, trial, predicted)
    return None if best is None else best[1:]


def _loss_gradients(loaded, data, seed: int = 0) -> Callable[[Any], None]:
    """A function that back-propagates the cross-entropy of one batch of 64 labelled samples of ``data``
    through a module, leaving ``.grad`` on its parameters (what a Taylor importance reads). Dropout draws
    from a generator seeded with ``seed`` (the global one is left as it was): the same gradients every run."""
    def compute(module) -> None:
        import torch

        from toolchain.training import forward, to_torch

        module.zero_grad(set_to_none=True)
        batch = next(data.batches(64))
        labels = torch.as_tensor(data.labels[:len(next(iter(batch.values())))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module.train()
            try:
                loss = torch.nn.functional.cross_entropy(forward(loaded, module, to_torch(batch)), labels)
                loss.backward()
            finally:
                module.eval()

    return compute
