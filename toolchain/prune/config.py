"""What a pruning run is asked (:class:`PruneConfig`) and what it gives back (:class:`StepRecord`,
:class:`PruneResult`). Plain dataclasses: no torch at import time."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolchain.core.errors import ToolchainError, option
from toolchain.prune.importance import ENERGY, IMPORTANCES

UNIT_IMPORTANCES = ("l1", "l2", "taylor")
"""How the energy-aware method scores transformer heads and MLP units (``PruneConfig.unit_importance``)."""


@dataclass
class PruneConfig:
    """What to prune and when to stop. Exactly one of ``ratio`` (uniform channel ratio, one shot),
    ``target_energy_reduction`` or ``target_latency_reduction`` (fractions, from the cost table).
    ``importance`` is a key of :data:`~toolchain.prune.importance.IMPORTANCES`. On transformers the
    energy method cuts per unit (:mod:`toolchain.prune.unitstep`): ``step`` of the current cost per step,
    heads and ``round_to`` groups of MLP neurons ranked together by ``unit_importance`` per unit of cost.
    ``seed`` seeds fine-tuning and Taylor scores: the same seed and inputs give the same pruned model."""

    importance: str = "l2"
    ratio: float | None = None
    target_energy_reduction: float | None = None
    target_latency_reduction: float | None = None
    max_accuracy_drop: float = 1.0  # points of accuracy (or of cosine x 100 for models without labels)
    step: float = 0.1  # uniform: share of every layer's width cut per step; energy: share of the current cost
    alpha: float = 1.0  # energy on CNNs: weight of the importance removed (transformers: importance / cost)
    beta: float = 1.0  # energy on CNNs: weight of the energy saved
    finetune_epochs: int = 1
    lr: float | None = None  # None: 1e-4, or 5e-5 for transformers (a trained model: small steps)
    batch_size: int = 64
    round_to: int | None = None
    exclude: tuple[str, ...] = ()
    max_steps: int = 40
    trials: int = 3  # energy on CNNs: candidates tried on copies each step (NetAdapt)
    patience: int = 3  # energy: consecutive rolled-back steps before stopping (transformers: each halves the step)
    reprofile_every: int = 0
    seed: int = 0
    unit_importance: str = "l2"  # energy on transformers: heads/MLP units scored by l1, l2 or taylor, per cost
    taylor_batches: int = 4  # batches of the training data a Taylor score is averaged over

    def validate(self) -> None:
        """Raise a one-line :class:`ToolchainError` for an unknown criterion, a missing or doubled
        target, a fraction outside (0, 1), or a ratio given to the energy method."""
        if self.importance not in IMPORTANCES:
            raise ToolchainError(f"unknown importance {self.importance!r}", hint=f"choose one of {', '.join(IMPORTANCES)}")
        targets = [x for x in (self.ratio, self.target_energy_reduction, self.target_latency_reduction) if x is not None]
        if len(targets) != 1:
            raise ToolchainError(f"give exactly one of {option('--ratio', 'ratio')}, {option('--target-energy-reduction', 'target_energy_reduction')}, {option('--target-latency-reduction', 'target_latency_reduction')}")
        for name in ("ratio", "target_energy_reduction", "target_latency_reduction"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ToolchainError(f"--{name.replace('_', '-')} {value} is out of range: it is a fraction in (0, 1), "
                                     "e.g. 0.3 for 30%")
        if self.importance == ENERGY and self.ratio is not None:
            raise ToolchainError(f"{option(f'--importance {ENERGY}', f'importance={ENERGY!r}')} chooses per-layer ratios from the cost table",
                                 hint=f"give {option('--target-energy-reduction', 'target_energy_reduction')} or {option('--target-latency-reduction', 'target_latency_reduction')} instead of {option('--ratio', 'ratio')}")
        if not 0 < self.step < 1:
            raise ToolchainError(f"{option('--step', 'step')} {self.step} is out of range (0, 1)")
        if self.unit_importance not in UNIT_IMPORTANCES:
            raise ToolchainError(f"unknown unit importance {self.unit_importance!r}",
                                 hint=f"choose one of {', '.join(UNIT_IMPORTANCES)}")
        if self.taylor_batches < 1:
            raise ToolchainError(f"taylor_batches {self.taylor_batches} must be a positive integer")
        if self.round_to is not None and self.round_to < 1:
            raise ToolchainError(f"{option('--round-to', 'round_to')} {self.round_to} must be a positive integer")


@dataclass
class StepRecord:
    """One pruning step: what was cut (group labels, or ``["all"]``), whether it was kept, the metric
    after it (percentage points), the parameters left, and the cost reduction (fraction of the table's
    total) predicted and, after a re-profile, measured; ``seconds`` of wall time."""

    step: int
    pruned: list[str]
    kept: bool
    accuracy: float
    params: int
    predicted_reduction: float
    measured_reduction: float | None = None
    seconds: float = 0.0
    macs: int | None = None  # MACs per sample after the step (Linear/Conv and attention matmuls)


@dataclass
class PruneResult:
    """A pruned ``module`` (eval mode) with its metric before/after (``metric_name``: ``accuracy %`` or
    ``cosine x 100``), parameters and MACs (per sample) before/after, the cost reduction (a fraction; how
    it was obtained in ``reduction_kind``), every step, and per layer (out channels, heads) before/after.

    ``predicted_reduction`` is the cost table's prediction alone (None without a table) and
    ``macs_reduction`` the share of MACs counted on the pruned model, so a caller can set both against
    a measurement; ``widths`` the widths after pruning: per transformer layer its heads
    (``"encoder.layer.0.attention"``) and MLP width (``"encoder.layer.0.mlp"``), else per Conv/Linear
    layer its output channels; ``seconds`` the run's wall time."""

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
    predicted_reduction: float | None = None
    macs_reduction: float = 0.0
    widths: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the module, JSON-ready (the ``result`` of reports and ``pruned.json``)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("module", "steps")}
        d["steps"] = [asdict(s) for s in self.steps]
        return d
