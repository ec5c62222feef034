"""Torch-Pruning graph operations: the prunable groups of a model, one cut, and the transformer units.

Channels are removed on Torch-Pruning's dependency graph of the *export wrapper*
(:func:`export_wrapper`: positional tensors in, a tuple out), so coupled layers (residual additions,
BatchNorms, the next layer's inputs) stay consistent. Module paths inside the wrapper start with
``model.``.

BERT-family encoders (MiniLM) are not cut here but in :mod:`toolchain.prune.units` (whole attention
heads and MLP neurons, by direct surgery); :func:`prune_transformer_units` is its uniform cut.

torch and Torch-Pruning are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolchain.prune.importance import build_importance
from toolchain.prune.units import attention_blocks

if TYPE_CHECKING:
    from toolchain.model.spec import LoadedModel
    from toolchain.prune.config import PruneConfig


def export_wrapper(loaded: LoadedModel, module: Any) -> Any:
    """``module`` wrapped as it is exported (:func:`toolchain.model.forward.export_module`): takes the
    inputs as positional tensors, returns a tuple of tensors; the module sits under ``model.``."""
    from dataclasses import replace

    from toolchain.model.forward import export_module

    return export_module(replace(loaded, module=module))


def example_args(loaded: LoadedModel, data: Any) -> tuple:
    """Example inputs for tracing: the first batch of 2 samples of ``data``, one tensor per model input
    (in ``loaded.inputs`` order, shape ``(2, *input shape)``)."""
    import torch

    first = next(data.batches(2))
    return tuple(torch.as_tensor(first[s.name]) for s in loaded.inputs)


def output_layer(module: Any) -> str | None:
    """The last Conv/Linear layer in module order: the classifier head, left alone by default."""
    from torch import nn

    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d):
            last = name
    return last


def module_names(module: Any) -> dict[Any, str]:
    """Module object -> its path in ``module``."""
    return {m: n for n, m in module.named_modules()}


def channel_widths(module: Any) -> dict[str, int]:
    """Per layer path its width: output channels of a Conv, output features of a Linear, and per
    attention block (key ``"<path> (heads)"``) its number of heads."""
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


def layer_widths(module: Any) -> dict[str, int]:
    """The ``widths`` of a pruning result: per transformer layer its heads and MLP width
    (:func:`toolchain.prune.units.widths`), else per Conv/Linear layer its output channels."""
    from toolchain.prune.units import widths

    return widths(module) if attention_blocks(module) else channel_widths(module)


def prunable_groups(loaded: LoadedModel, module: Any, example: tuple, ignored: list) -> list[tuple[Any, Any]]:
    """(root layer, Torch-Pruning group) for every prunable group rooted at a Conv/Linear of the export
    wrapper, ``ignored`` layers (module objects) left out. Root layers are the wrapper's modules."""
    import torch_pruning as tp
    from torch import nn

    wrapper = export_wrapper(loaded, module)
    dg = tp.DependencyGraph().build_dependency(wrapper, example_inputs=example, output_transform=_sum_outputs)
    out = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Conv1d, nn.Linear]):
        root = group[0].dep.target.module
        out.append((root, group))
    return out


def apply_pruning(loaded: LoadedModel, module: Any, example: tuple, ratios: dict[Any, float] | float, ignored: list,
                  config: PruneConfig, grads: Callable[[Any], None] | None) -> None:
    """One Torch-Pruning step on ``module``, in place: ``ratios`` (fractions of channels) per root layer
    (module objects; others untouched), or one ratio for every layer. Channels are ranked by
    ``config.importance``; ``grads(module)`` first back-propagates for a gradient-based criterion."""
    import torch_pruning as tp

    wrapper = export_wrapper(loaded, module)
    if grads is not None:
        grads(module)
    kwargs: dict[str, Any] = {"pruning_ratio": ratios} if isinstance(ratios, float) else {
        "pruning_ratio": 0.0, "pruning_ratio_dict": ratios}
    pruner = tp.pruner.BasePruner(wrapper, example, importance=build_importance(config.importance),
                                  ignored_layers=ignored, round_to=config.round_to, global_pruning=False,
                                  output_transform=_sum_outputs, **kwargs)
    pruner.step()
    module.zero_grad(set_to_none=True)


def _sum_outputs(out):
    return sum(o.float().sum() for o in out) if isinstance(out, tuple | list) else out.float().sum()


# ---------------------------------------------------------------------------------------------- transformers


def prune_transformer_units(loaded: LoadedModel, module: Any, example: tuple, units: list[tuple[str, str]],
                            config: PruneConfig, scores: dict[tuple[str, str], list[float]] | None = None) -> None:
    """Cut ``config.step`` (a fraction) of the heads / MLP width of each of ``units``, in place (MLP width
    to a multiple of ``config.round_to``; at least one head and one multiple stay), by direct surgery
    (:mod:`toolchain.prune.units`: no dependency graph is traced). Members are ranked by ``scores`` (one
    per head or neuron, higher kept), by default their L1 (``config.importance`` ``"l1"``) or L2 norm.
    ``loaded`` and ``example`` are unused (kept for callers)."""
    from toolchain.prune.units import apply_cut, magnitude_scores
    from toolchain.prune.unitstep import uniform_plan

    if scores is None:
        scores = magnitude_scores(module, list(units), p=1 if config.importance == "l1" else 2)
    apply_cut(module, uniform_plan({u: scores[u] for u in units}, config.step, max(config.round_to or 1, 1)))
