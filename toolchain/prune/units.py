"""Transformer units (BERT-family encoders: BERT, MiniLM, RoBERTa, ViT): attention heads and MLP
intermediate neurons, found by module path, scored, and cut by direct surgery on their Linear layers.

A layer ``L`` (``encoder.layer.0``) has two units:

* ``("heads", L.attention.self)``: a self-attention block with ``num_attention_heads`` and
  ``query``/``key``/``value``; a head is ``attention_head_size`` rows of each projection and the same
  columns of the output projection ``L.attention.output.dense``;
* ``("mlp", L.intermediate.dense)``: a neuron is one row of the intermediate layer and one column of
  ``L.output.dense``.

The residual width never changes, so nothing outside a unit is touched: no dependency graph is traced
(Torch-Pruning is not used here), a cut is a few index selects, and it is the same on every run.

Scores (one float per head or neuron, higher is kept; :func:`magnitude_scores`, :func:`taylor_scores`):

* ``l1``/``l2``: the L1 norm / squared L2 norm of every weight and bias of the unit (the head's rows of
  query/key/value and columns of the output projection; a neuron's row and column);
* ``taylor``: the first-order loss change of removing the unit, ``|dL/dm|`` for a gate ``m`` on the
  unit's output (the head's context, the neuron's activation), which is ``sum(W * dL/dW)`` over the
  unit's columns of the output projection; root mean square over a few batches. With labels ``L`` is
  the cross-entropy; without (embeddings), ``z . f(x)`` for a fresh Gaussian ``z`` per batch (seeded), so
  the score estimates how far removing the unit moves the outputs (Gauss-Newton, random projections).

torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

Unit = tuple[str, str]
"""``(kind, path)``: ``("heads", attention block path)`` or ``("mlp", intermediate.dense path)``."""


def attention_blocks(module: Any) -> dict[str, Any]:
    """Self-attention modules with ``num_attention_heads`` and query/key/value projections, by path."""
    return {n: m for n, m in module.named_modules()
            if hasattr(m, "num_attention_heads") and all(hasattr(m, k) for k in ("query", "key", "value"))}


def _mlp_layers(module: Any) -> dict[str, Any]:
    return {n: m for n, m in module.named_modules() if n.endswith("intermediate.dense")}


def layer_of(kind: str, name: str) -> str:
    """The encoder layer a unit belongs to: ``encoder.layer.0`` for ``encoder.layer.0.attention.self``
    and ``encoder.layer.0.intermediate.dense``."""
    return name.rsplit(".", 2)[0]


def output_projection(kind: str, name: str) -> str:
    """Path of the Linear whose input columns a unit owns (the layer's attention or MLP output)."""
    if kind == "heads":
        return f"{name.rsplit('.', 1)[0]}.output.dense"
    return f"{layer_of(kind, name)}.output.dense"


def find_units(module: Any, min_heads: int, min_width: int) -> list[Unit]:
    """Every unit whose output projection exists and fits, heads first, each kind in module order."""
    mods = dict(module.named_modules())

    def fits(kind: str, name: str, width: int) -> bool:
        out = mods.get(output_projection(kind, name))
        return out is not None and getattr(out, "in_features", None) == width

    units: list[Unit] = [("heads", n) for n, m in attention_blocks(module).items()
                         if m.num_attention_heads >= min_heads and fits("heads", n, m.query.out_features)]
    units += [("mlp", n) for n, m in _mlp_layers(module).items()
              if m.out_features >= min_width and fits("mlp", n, m.out_features)]
    return units


def transformer_units(module: Any) -> list[Unit]:
    """The prunable units of a transformer: ``("heads", path)`` of every attention block with more than
    one head, ``("mlp", path)`` of every intermediate layer wider than 8."""
    return find_units(module, 2, 9)


def unit_modules(kind: str, name: str) -> list[str]:
    """Module paths whose cost a unit's width scales (the cost table rows it owns): for heads the block
    (the attention matmuls and softmax), its projections and the output projection; for the MLP the
    intermediate layer, its activation and the output dense layer."""
    if kind == "heads":
        return [name, f"{name}.query", f"{name}.key", f"{name}.value", output_projection(kind, name)]
    layer = layer_of(kind, name)
    return [name, f"{layer}.intermediate", f"{layer}.intermediate.intermediate_act_fn", output_projection(kind, name)]


def unit_width(module: Any, kind: str, name: str) -> int:
    """Heads of an attention block, or neurons of an intermediate layer."""
    m = dict(module.named_modules())[name]
    return int(m.num_attention_heads if kind == "heads" else m.out_features)


def widths(module: Any) -> dict[str, int]:
    """Per encoder layer its heads (``"<layer>.attention"``) and MLP width (``"<layer>.mlp"``), layers in
    module order (the ``widths`` of a pruning result)."""
    out = {}
    for kind, name in find_units(module, 1, 1):
        out[f"{layer_of(kind, name)}.{'attention' if kind == 'heads' else 'mlp'}"] = unit_width(module, kind, name)
    return out


def unit_label(kind: str, name: str) -> str:
    """``encoder.layer.0.attention`` / ``encoder.layer.0.mlp``: a unit as widths and step records name it."""
    return f"{layer_of(kind, name)}.{'attention' if kind == 'heads' else 'mlp'}"


# ---------------------------------------------------------------------------------------------- surgery


def _keep(linear: Any, idx: Any, dim: int) -> None:
    """Keep ``idx`` of a Linear's output rows (``dim`` 0, bias too) or input columns (``dim`` 1)."""
    import torch

    w = linear.weight
    linear.weight = torch.nn.Parameter(w.detach().index_select(dim, idx).clone(), requires_grad=w.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            b = linear.bias
            linear.bias = torch.nn.Parameter(b.detach().index_select(0, idx).clone(), requires_grad=b.requires_grad)
        linear.out_features = len(idx)
    else:
        linear.in_features = len(idx)


def remove_members(module: Any, kind: str, name: str, members: list[int]) -> None:
    """Remove heads (``kind`` ``"heads"``) or neurons (``"mlp"``) ``members`` (indices) of a unit, in
    place; at least one must stay. The attention block's head counts are updated so it still runs and
    exports (``attention_head_size`` is unchanged)."""
    import torch

    if not members:
        return
    mods = dict(module.named_modules())
    m, out = mods[name], mods[output_projection(kind, name)]
    width = unit_width(module, kind, name)
    drop = set(members)
    keep = [i for i in range(width) if i not in drop]
    if not keep:
        raise ValueError(f"cannot remove every {'head' if kind == 'heads' else 'neuron'} of {name}")
    if kind == "heads":
        size = m.attention_head_size
        idx = torch.tensor([h * size + i for h in keep for i in range(size)], dtype=torch.long)
        for k in ("query", "key", "value"):
            _keep(getattr(m, k), idx, 0)
        m.num_attention_heads = len(keep)
        m.all_head_size = len(keep) * size
    else:
        idx = torch.tensor(keep, dtype=torch.long)
        _keep(m, idx, 0)
    _keep(out, idx, 1)


def apply_cut(module: Any, cut: dict[Unit, list[int]]) -> None:
    """Remove ``cut[unit]`` (member indices) of every unit, in place, then drop stale gradients."""
    for (kind, name), members in cut.items():
        remove_members(module, kind, name, members)
    module.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- scores


def magnitude_scores(module: Any, units: list[Unit], p: int = 2) -> dict[Unit, list[float]]:
    """Per unit one score per member: the L1 norm (``p`` 1) or squared L2 norm (``p`` 2) of all its
    weights and biases (see the module docstring)."""
    import torch

    mods = dict(module.named_modules())

    def norm(t: Any) -> Any:
        return t.abs().sum(1) if p == 1 else t.pow(2).sum(1)

    out: dict[Unit, list[float]] = {}
    with torch.no_grad():
        for kind, name in units:
            m, proj = mods[name], mods[output_projection(kind, name)]
            width = unit_width(module, kind, name)
            if kind == "heads":
                rows = [getattr(m, k) for k in ("query", "key", "value")]
            else:
                rows = [m]
            parts = [torch.cat([r.weight, r.bias[:, None]], 1) if r.bias is not None else r.weight for r in rows]
            per_row = sum(norm(x.double()) for x in parts) + norm(proj.weight.double().t())
            out[(kind, name)] = [float(v) for v in per_row.view(width, -1).sum(1)]
    return out


def taylor_scores(loaded: Any, module: Any, units: list[Unit], data: Any, *, labelled: bool, batches: int,
                  batch_size: int, seed: int) -> dict[Unit, list[float]]:
    """Per unit one score per member: the root mean square over ``batches`` batches of ``data`` (its first
    samples, in order) of the first-order loss change of removing the member (see the module
    docstring). Run in eval mode (no dropout) with a seeded Gaussian for unlabelled data, so the same
    module and data give the same scores."""
    import numpy as np
    import torch

    from toolchain.training import forward, to_torch

    mods = dict(module.named_modules())
    projections = {u: mods[output_projection(*u)] for u in units}
    sums = {u: torch.zeros(unit_width(module, *u), dtype=torch.float64) for u in units}
    generator = torch.Generator().manual_seed(seed)
    labels = None if data.labels is None else np.asarray(data.labels, dtype=np.int64)
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    seen, start = 0, 0
    try:
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        for proj in projections.values():
            proj.weight.requires_grad_(True)
        for batch in data.batches(batch_size):
            if seen >= batches:
                break
            n = len(next(iter(batch.values())))
            with torch.enable_grad():
                out = forward(loaded, module, to_torch(batch))
                if labelled and labels is not None:
                    loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(labels[start:start + n]))
                else:
                    loss = (out * torch.randn(out.shape, generator=generator)).sum()
                grads = torch.autograd.grad(loss, [projections[u].weight for u in units])
            for u, g in zip(units, grads, strict=True):
                w = projections[u].weight.detach()
                per_column = (g.double() * w.double()).sum(0).view(len(sums[u]), -1).sum(1)
                sums[u] += per_column.pow(2)
            seen, start = seen + 1, start + n
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    return {u: [float(v) for v in (s / max(seen, 1)).sqrt()] for u, s in sums.items()}
