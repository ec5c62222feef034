"""One pruning step on a transformer's units (:mod:`toolchain.prune.units`), and the cost table's
prediction after it.

* **energy-aware** (:meth:`UnitStepper.energy`): every head, and every group of ``round_to`` MLP
  neurons (the target's channel multiple; the least important neurons of a layer first), is a candidate
  in ONE ranking across all layers, by importance per unit of cost: its score (``unit_importance``;
  magnitude scores as a share of their kind's total, so heads and neurons compare; Taylor scores are
  loss changes and compare as they are) over its predicted share of the cost table. The cheapest
  importance per joule goes first until the step's cut, ``step`` of the current cost (never past the
  target), is reached; a layer keeps at least one head and one group. A rolled-back step halves the
  next step's cut.
* **uniform** (:meth:`UnitStepper.uniform`): every layer loses the same share of its heads and of its
  MLP width (rounded to ``round_to``), the least important members first (the magnitude baseline).

Cost prediction (:meth:`UnitStepper.predict`): a unit's modules (:func:`~toolchain.prune.units.unit_modules`:
the attention block with its projections and output dense, the intermediate layer with its activation
and output dense) scale with remaining heads / heads and remaining width / width from the last measured
costs; everything else (embeddings, LayerNorms, residual additions) keeps its cost.

Ranking ties are broken by module order and member index, and scores are computed in eval mode with a
seeded generator: the same model, data and seed give the same cut.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING, Any

from toolchain.prune.units import (
    Unit,
    apply_cut,
    find_units,
    magnitude_scores,
    taylor_scores,
    transformer_units,
    unit_label,
    unit_modules,
    unit_width,
)

if TYPE_CHECKING:
    from toolchain.prune.config import PruneConfig


def _order(scores: list[float]) -> list[int]:
    """Member indices, least important first (ties: lower index first)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def _groups(kind: str, scores: list[float], round_to: int) -> list[list[int]]:
    """A unit's removable candidates in removal order: single heads, or groups of ``round_to`` neurons
    (the first group takes the remainder, so what stays is a multiple); the last one always stays."""
    order = _order(scores)
    if kind == "heads":
        return [[i] for i in order[:-1]]
    first = len(order) % round_to or round_to
    groups = [order[:first]] + [order[j:j + round_to] for j in range(first, len(order), round_to)]
    return groups[:-1]


def energy_plan(scores: dict[Unit, list[float]], member_cost: dict[Unit, float], goal: float, round_to: int,
                normalise: bool) -> dict[Unit, list[int]]:
    """The members to remove: candidates (:func:`_groups`) taken by ascending importance per unit of cost
    until their cost reaches ``goal`` (at least one is taken). ``member_cost``: the predicted cost of one
    head or neuron of each unit (units costing nothing are never cut); ``normalise``: divide each score by
    the total of its kind (magnitude scores), else use scores as they are (loss changes)."""
    totals: dict[str, float] = {}
    for (kind, _), s in scores.items():
        totals[kind] = totals.get(kind, 0.0) + sum(s)
    queues: list[tuple[Unit, list[tuple[float, list[int], float]]]] = []
    for unit, s in scores.items():
        each = member_cost.get(unit, 0.0)
        if each <= 0:
            continue
        scale = 1 / totals[unit[0]] if normalise and totals[unit[0]] > 0 else 1.0
        queue = []
        for g in _groups(unit[0], s, round_to):
            cost = each * len(g)
            queue.append((sum(s[i] for i in g) * scale / cost, g, cost))
        if queue:
            queues.append((unit, queue))
    heap = [(q[0][0], n, 0) for n, (_, q) in enumerate(queues)]
    heapq.heapify(heap)
    plan: dict[Unit, list[int]] = {}
    cut = 0.0
    while heap and (cut < goal or not plan):
        _, n, k = heapq.heappop(heap)
        unit, queue = queues[n]
        _, members, cost = queue[k]
        plan.setdefault(unit, []).extend(members)
        cut += cost
        if k + 1 < len(queue):
            heapq.heappush(heap, (queue[k + 1][0], n, k + 1))
    return {u: sorted(m) for u, m in plan.items()}


def uniform_plan(scores: dict[Unit, list[float]], share: float, round_to: int) -> dict[Unit, list[int]]:
    """The members to remove when every unit loses ``share`` of its width: heads rounded to the nearest
    whole head (at least one stays), MLP width to a multiple of ``round_to`` (at least ``round_to``
    stays); the least important members go."""
    plan = {}
    for (kind, name), s in scores.items():
        width = len(s)
        if kind == "heads":
            keep = max(1, math.floor(width * (1 - share) + 0.5))
        else:
            keep = max(min(round_to, width), math.floor(width * (1 - share) / round_to + 0.5) * round_to)
        if keep < width:
            plan[(kind, name)] = sorted(_order(s)[:width - keep])
    return plan


class UnitStepper:
    """The transformer side of :func:`~toolchain.prune.netadapt.prune_model`: scores, cuts and predicts.
    ``costs`` is the cost table per module (None: uniform pruning judged on MACs), ``train_data`` what
    Taylor scores are computed on, ``labelled`` whether its loss is the cross-entropy."""

    def __init__(self, loaded: Any, module: Any, config: PruneConfig, costs: dict[str, float] | None,
                 train_data: Any, labelled: bool):
        self.loaded, self.config, self.train_data, self.labelled = loaded, config, train_data, labelled
        self.round_to = max(config.round_to or 1, 1)
        self.scale = 1.0  # of the step's cut; halved by every rollback
        self.rebase(costs or {}, module)

    def rebase(self, costs: dict[str, float], module: Any) -> None:
        """Predict from ``costs`` (measured on ``module``, e.g. after a re-profile) from now on."""
        self.ref_costs = dict(costs)
        self.ref_widths = self.widths(module)

    @staticmethod
    def widths(module: Any) -> dict[Unit, int]:
        return {u: unit_width(module, *u) for u in find_units(module, 1, 1)}

    def predict(self, module: Any) -> dict[str, float]:
        """Per-module costs of ``module``: the reference costs with every unit's modules scaled by its width
        over its reference width."""
        now = self.widths(module)
        factor = {}
        for unit, w0 in self.ref_widths.items():
            for m in unit_modules(*unit):
                factor[m] = now.get(unit, 0) / w0
        return {k: v * factor.get(k, 1.0) for k, v in self.ref_costs.items()}

    def _units(self, module: Any) -> list[Unit]:
        excluded = set(self.config.exclude)
        return [u for u in transformer_units(module) if not set(unit_modules(*u)) & excluded]

    def scores(self, module: Any, units: list[Unit], criterion: str, step_no: int) -> dict[Unit, list[float]]:
        """One score per member of every unit by ``criterion`` (``l1``, ``l2`` or ``taylor``)."""
        if criterion == "taylor":
            c = self.config
            return taylor_scores(self.loaded, module, units, self.train_data, labelled=self.labelled,
                                 batches=c.taylor_batches, batch_size=min(c.batch_size, 16),
                                 seed=c.seed * 1_000_003 + step_no)
        return magnitude_scores(module, units, p=1 if criterion == "l1" else 2)

    def _apply(self, module: Any, plan: dict[Unit, list[int]]) -> list[str]:
        labels = [f"{unit_label(*u)} {unit_width(module, *u)}->{unit_width(module, *u) - len(m)}"
                  for u, m in plan.items()]
        apply_cut(module, plan)
        return labels

    def uniform(self, module: Any, share: float, step_no: int = 0) -> list[str]:
        """Cut ``share`` of every unit's width, in place (criterion: ``config.importance``, ``energy``
        meaning L2); returns one label per unit cut ("<layer>.attention 12->10"), empty when nothing could
        be cut."""
        units = self._units(module)
        criterion = self.config.importance if self.config.importance in ("l1", "taylor") else "l2"
        return self._apply(module, uniform_plan(self.scores(module, units, criterion, step_no), share, self.round_to))

    def energy(self, module: Any, current: dict[str, float], floor: float, step_no: int) -> list[str]:
        """One energy-aware step, in place: cut ``scale * step`` of the current cost (``current``, per
        module), but not below ``floor`` (the target's total cost); returns the labels of the units cut."""
        total = sum(current.values())
        goal = min(self.scale * self.config.step * total, total - floor)
        units = self._units(module)
        each = {u: sum(current.get(m, 0.0) for m in unit_modules(*u)) / unit_width(module, *u) for u in units}
        criterion = self.config.unit_importance
        scores = self.scores(module, units, criterion, step_no)
        plan = energy_plan(scores, each, goal, self.round_to, normalise=criterion != "taylor")
        return self._apply(module, plan)

    def rolled_back(self) -> None:
        self.scale /= 2
