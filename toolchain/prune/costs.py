"""Cost prediction: what a module costs on the target before and after a cut.

The measured side is a cost table (:class:`toolchain.formats.costs.CostTable`, written by
``toolchain profile``): per PyTorch module, J or ms per inference. Pruning reads it only through
:func:`table_costs` / :func:`costs_for`. After a cut, each module's cost is predicted to scale with its
*work* (:func:`module_work`), so no re-measurement is needed between steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError, option
from toolchain.formats.costs import UNMAPPED
from toolchain.prune.graph import export_wrapper

if TYPE_CHECKING:
    from toolchain.formats.costs import CostTable
    from toolchain.model.spec import LoadedModel

def count_params(module: Any) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def module_work(loaded: LoadedModel, module: Any, example: tuple) -> dict[str, int]:
    """Per module (every one, containers too), the work its cost scales with for one sample:
    multiply-accumulates for Conv and Linear layers, output elements for everything else (activations,
    pooling, normalisation, attention). Recorded with forward hooks on the first sample of ``example``."""
    return _work(loaded, module, example)[0]


def _work(loaded: LoadedModel, module: Any, example: tuple) -> tuple[dict[str, int], int]:
    """:func:`module_work`, and the MACs of the attention matmuls (``Q K^T`` and ``softmax V`` of every
    self-attention block: 2 x seq^2 x heads x head size), from one forward pass."""
    import torch
    from torch import nn

    from toolchain.prune.units import attention_blocks

    work: dict[str, int] = {}
    blocks = {id(m) for m in attention_blocks(module).values()}
    attention: list[int] = []

    def hook(name):
        def record(m, inputs, output):
            out = output[0] if isinstance(output, tuple | list) else output
            if not isinstance(out, torch.Tensor):
                return
            per_sample = out.numel() // max(out.shape[0], 1) if out.dim() else 1
            if id(m) in blocks and out.dim() == 3:  # [batch, seq, heads x head size]
                attention.append(2 * out.shape[1] * per_sample)
            if isinstance(m, nn.Conv2d | nn.Conv1d):
                per_sample *= (m.in_channels // m.groups) * math.prod(m.kernel_size)
            elif isinstance(m, nn.Linear):
                per_sample *= m.in_features
            work[name] = work.get(name, 0) + per_sample
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules()]
    try:
        with torch.no_grad():
            export_wrapper(loaded, module)(*[x[:1] for x in example])
    finally:
        for h in handles:
            h.remove()
    return work, sum(attention)


def count_macs(loaded: LoadedModel, module: Any, example: tuple) -> int:
    """Multiply-accumulates for one sample: Conv and Linear layers, plus the two attention matmuls of
    every self-attention block (``Q K^T`` and ``softmax V``: 2 x seq^2 x heads x head size, as the cost
    table's attention rows count them)."""
    from torch import nn

    layers = {n for n, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)}
    work, attention = _work(loaded, module, example)
    return sum(v for k, v in work.items() if k in layers) + attention


def table_costs(table: CostTable, metric: str) -> dict[str, float]:
    """Per module path the table's mean cost per inference: J (``metric`` ``"energy"``) or ms
    (``"latency"``). Kernels the export could not map to a module are under ``"(unmapped)"``. Refuses a
    table whose costs are not finite and non-negative."""
    rows = {r.module: (r.energy_j_mean if metric == "energy" else r.latency_ms_mean) for r in table.rows}
    what = "energy (J)" if metric == "energy" else "latency (ms)"
    for module, cost in rows.items():
        if not isinstance(cost, int | float) or isinstance(cost, bool) or not math.isfinite(cost) or cost < 0:
            raise ToolchainError(f"the cost table's {what} of {module or '(model)'!r} is {cost!r}, not a finite "
                                 "non-negative number: the table is corrupt",
                                 hint="profile the model again with `toolchain profile`")
    return rows


def table_target(table: CostTable, target_name: str | None) -> str:
    """The target a cost table's costs hold for: the table's own, which must be ``target_name`` when one
    is given (the target pruning runs against); with none given, the table's target is the one used (name
    it to the user). A table that names no target is refused."""
    name = table.target.get("name") if isinstance(table.target, dict) else None
    if not isinstance(name, str) or not name:
        raise ToolchainError("the cost table names no target: it cannot be checked against the target you prune for",
                             hint="profile the model again with `toolchain profile --target T`")
    if target_name and name != target_name:
        raise ToolchainError(f"the cost table was measured on target {name!r}, not {target_name!r}",
                             hint="profile on the target you prune for, or pass "
                                  + option(f"--target {name}", f"target_spec={name!r}"))
    return name


def costs_for(table: CostTable, loaded: LoadedModel, module: Any, target_name: str | None,
              metric: str) -> dict[str, float]:
    """Per-module cost (J or ms per inference, see :func:`table_costs`) from a cost table, after checking
    that the table belongs to this model (its source hash, which it must have, and module names) and to
    this target (:func:`table_target`: with ``target_name`` None the table's own target is used). A stale,
    foreign, unverifiable or corrupt table is refused."""
    table.validate("the cost table")
    src = table.model.get("source_hash") if isinstance(table.model, dict) else None
    if not isinstance(src, str) or not src:
        raise ToolchainError("the cost table does not record the source hash of the model it was measured on, so it "
                             "cannot be checked against this model",
                             hint="profile this model's export with `toolchain profile` and pass that table")
    if src != loaded.source_hash:
        raise ToolchainError(f"the cost table was measured on another model (source hash {src[:12]}..., this model "
                             f"{loaded.source_hash[:12]}...): it is stale or foreign",
                             hint="profile this model's export with `toolchain profile` and pass that table")
    table_target(table, target_name)
    if table.granularity != "module":
        raise ToolchainError("the cost table is per ONNX node (its model carries no node-to-module map), so its rows "
                             "cannot be fed back to PyTorch modules",
                             hint="profile an export of this model made with `toolchain export`")
    fused = [r.module for r in table.rows if r.fused_by]
    if fused:
        raise ToolchainError(f"the cost table has rows the execution provider fused into one kernel ({fused[0]}): "
                             "their time is not split per module, so layers cannot be ranked by it",
                             hint="profile on a target whose provider reports per-node times (e.g. x86-cpu)")
    names = {n for n, _ in module.named_modules()}
    rows = table_costs(table, metric)
    if sum(rows.values()) <= 0:
        what = "energy (J)" if metric == "energy" else "latency (ms)"
        raise ToolchainError(f"the cost table's {what} is zero for every layer: there is nothing to reduce and no "
                             "share to rank layers by",
                             hint="profile the model again with `toolchain profile` (with a working meter, or "
                                  + option("--meter estimate", "meter='estimate'") + ")")
    unknown = [m for m in rows if m and m not in names and m != UNMAPPED]
    if unknown:
        raise ToolchainError(f"the cost table names modules this model does not have ({', '.join(unknown[:3])}): "
                             "it was measured on another architecture or an already-pruned model",
                             hint="profile the model you are pruning")
    return rows


def predict_costs(current: dict[str, float], before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Per-module costs after a step, predicted: each module's cost (``current``, J or ms) scales with its
    work (:func:`module_work` ``before`` and ``after`` the step: MACs of a layer, output elements of a
    pooling, activation or attention block), so a pooling after a pruned convolution, or the attention
    scores of fewer heads, shrink with it. Modules without work (``(unmapped)``) keep their cost."""
    return {name: cost * after.get(name, 0) / before[name] if before.get(name) else cost
            for name, cost in current.items()}
