"""Torch-Pruning graph operations: the prunable groups of a model, one cut, and the transformer units.

Channels are removed on Torch-Pruning's dependency graph of the *export wrapper*
(:func:`export_wrapper`: positional tensors in, a tuple out), so coupled layers (residual additions,
BatchNorms, the next layer's inputs) stay consistent. Module paths inside the wrapper start with
``model.``.

BERT-family encoders (MiniLM): whole attention heads (query/key/value rows of a head, the output
projection's columns) and MLP width (intermediate rows, output columns) are cut; the residual width
stays. Their units are ``("heads", attention path)`` and ``("mlp", intermediate.dense path)``.

torch and Torch-Pruning are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolchain.prune.importance import build_importance

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


def attention_blocks(module: Any) -> dict[str, Any]:
    """Self-attention modules with ``num_attention_heads`` and query/key/value projections, by path."""
    return {n: m for n, m in module.named_modules()
            if hasattr(m, "num_attention_heads") and all(hasattr(m, k) for k in ("query", "key", "value"))}


def _mlp_layers(module: Any) -> dict[str, Any]:
    return {n: m for n, m in module.named_modules() if n.endswith("intermediate.dense")}


def transformer_units(module: Any) -> list[tuple[str, str]]:
    """The prunable units of a transformer: ``("heads", path)`` of every attention block with more than
    one head, ``("mlp", path)`` of every intermediate layer wider than 8."""
    units = [("heads", n) for n, m in attention_blocks(module).items() if m.num_attention_heads > 1]
    units += [("mlp", n) for n, m in _mlp_layers(module).items() if m.out_features > 8]
    return units


def unit_modules(kind: str, name: str) -> list[str]:
    """Module paths whose cost a unit's width scales (for the cost table)."""
    if kind == "heads":  # .../attention/self -> its projections, itself, and .../attention/output/dense
        parent = name.rsplit(".", 1)[0]
        return [name, f"{name}.query", f"{name}.key", f"{name}.value", f"{parent}.output.dense"]
    layer = name.rsplit(".", 2)[0]  # .../intermediate/dense -> the layer
    return [name, f"{layer}.intermediate", f"{layer}.intermediate.intermediate_act_fn", f"{layer}.output.dense"]


def prune_transformer_units(loaded: LoadedModel, module: Any, example: tuple, units: list[tuple[str, str]],
                            config: PruneConfig) -> None:
    """Cut ``config.step`` (a fraction) of the heads / MLP width of each of ``units`` with Torch-Pruning,
    in place, then fix the attention modules' head counts so the model still runs and exports."""
    import torch_pruning as tp

    wrapper = export_wrapper(loaded, module)
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
    pruner = tp.pruner.BasePruner(wrapper, example, importance=build_importance(config.importance), pruning_ratio=0.0,
                                  pruning_ratio_dict=ratios, num_heads=num_heads, prune_num_heads=True,
                                  prune_head_dims=False, head_pruning_ratio_dict=head_ratios or None,
                                  round_to=config.round_to, global_pruning=False, output_transform=_sum_outputs)
    pruner.step()
    for b in blocks.values():
        b.num_attention_heads = pruner.num_heads[b.query]
        b.all_head_size = b.query.out_features
        b.attention_head_size = b.query.out_features // b.num_attention_heads
    module.zero_grad(set_to_none=True)
