"""Cost prediction: what a module costs on the target before and after a cut.

The measured side is a cost table (:class:`toolchain.formats.costs.CostTable`, written by
``toolchain profile``): per PyTorch module, J or ms per inference. Pruning reads it only through
:func:`table_costs` / :func:`costs_for`. After a cut, each module's cost is predicted to scale with its
*work* (:func:`module_work`), so no re-measurement is needed between steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError
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
            export_wrapper(loaded, module)(*[x[:1] for x in example])
    finally:
        for h in handles:
            h.remove()
    return work


def count_macs(loaded: LoadedModel, module: Any, example: tuple) -> int:
    """Multiply-accumulates of Conv and Linear layers for one sample."""
    from torch import nn

    layers = {n for n, m in module.named_modules() if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)}
    return sum(v for k, v in module_work(loaded, module, example).items() if k in layers)


def table_costs(table: CostTable, metric: str) -> dict[str, float]:
    """Per module path the table's mean cost per inference: J (``metric`` ``"energy"``) or ms
    (``"latency"``). Kernels the export could not map to a module are under ``"(unmapped)"``."""
    return {r.module: (r.energy_j_mean if metric == "energy" else r.latency_ms_mean) for r in table.rows}


def costs_for(table: CostTable, loaded: LoadedModel, module: Any, target_name: str | None,
              metric: str) -> dict[str, float]:
    """Per-module cost (J or ms per inference, see :func:`table_costs`) from a cost table, after checking
    that the table belongs to this model (its source hash and module names) and this target. A stale or
    foreign table is refused."""
    src = table.model.get("source_hash")
    if src and src != loaded.source_hash:
        raise ToolchainError(f"the cost table was measured on another model (source hash {src[:12]}..., this model "
                             f"{loaded.source_hash[:12]}...): it is stale or foreign",
                             hint="profile this model's export with `toolchain profile` and pass that table")
    if target_name and table.target.get("name") != target_name:
        raise ToolchainError(f"the cost table was measured on target {table.target.get('name')!r}, not {target_name!r}",
                             hint="profile on the target you prune for")
    names = {n for n, _ in module.named_modules()}
    rows = table_costs(table, metric)
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
