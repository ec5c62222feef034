"""Importance criteria: how channels are ranked inside a pruning group, and the index's weight-norm term.

:data:`IMPORTANCES` is the one registry of criteria: a name (``--importance NAME``, the
:class:`~toolchain.prune.config.PruneConfig` field) mapped to a callable with no arguments that builds
a Torch-Pruning importance (``tp.importance.Importance``: ``group -> 1-D tensor`` of one score per
channel of the group, higher is kept). The CLI choices and the validation messages are its keys.
Adding a criterion is one builder plus one entry in the dict below::

    def _fpgm():  # channels far from their group's geometric median are kept
        import torch_pruning as tp  # inside: this module must stay light
        return tp.importance.FPGMImportance()

    IMPORTANCES = {..., "fpgm": _fpgm}

A criterion whose importance is a Torch-Pruning Taylor importance gets the loss gradients computed
before every cut (:func:`needs_gradients`). :data:`ENERGY` is not a ranking of its own: it selects the
energy-aware method (:mod:`toolchain.prune.netadapt`), which picks *which group* to cut by the cost
table, and ranks the channels inside it by their L2 norm; on transformers it ranks every head and MLP
unit by importance per unit of cost (:mod:`toolchain.prune.unitstep`, scored by
``PruneConfig.unit_importance``).

This module imports neither torch nor Torch-Pruning at import time (``toolchain prune --help`` reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ENERGY = "energy"


def _l1() -> Any:
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=1)


def _l2() -> Any:
    import torch_pruning as tp

    return tp.importance.GroupMagnitudeImportance(p=2)


def _taylor() -> Any:
    import torch_pruning as tp

    return tp.importance.GroupTaylorImportance()


IMPORTANCES: dict[str, Callable[[], Any]] = {
    "l1": _l1,  # channels ranked by the L1 norm of their weights (over the whole group)
    "l2": _l2,  # by the L2 norm
    "taylor": _taylor,  # by first-order Taylor importance |w * dL/dw| (needs labelled data)
    ENERGY: _l2,  # the energy-aware method: the cost table picks the group, L2 the channels in it
}


def build_importance(name: str) -> Any:
    """A fresh Torch-Pruning importance for criterion ``name`` (a key of :data:`IMPORTANCES`)."""
    return IMPORTANCES[name]()


def needs_gradients(importance: Any) -> bool:
    """Whether ``importance`` (a built Torch-Pruning importance) reads ``.grad``: the loss must be
    back-propagated before each cut."""
    import torch_pruning as tp

    return isinstance(importance, tp.importance.GroupTaylorImportance)


# ---------------------------------------------------------------------------------------------- index terms
# The energy-aware index (CNNs) trades energy saved against dW/W: the share of a group's weight norm a cut
# removes, always measured by the L2 norm whatever --importance ranks with. Transformer heads and MLP
# units are scored in toolchain.prune.units.


def group_importance_removed(group: Any, step: float) -> float:
    """Share in [0, 1] of a Torch-Pruning group's total L2 weight norm held by its ``step`` (a fraction)
    least important channels: what cutting them removes."""
    import torch_pruning as tp

    scores = tp.importance.GroupMagnitudeImportance(p=2)(group)
    if scores is None or len(scores) == 0:
        return 1.0
    return _smallest_share(scores, max(1, round(len(scores) * step)))


def _smallest_share(scores: Any, k: int) -> float:
    """Share of the total score held by the ``k`` smallest scores (what cutting them removes)."""
    s = scores.sort().values
    return float(s[:k].sum() / s.sum()) if float(s.sum()) > 0 else 1.0
