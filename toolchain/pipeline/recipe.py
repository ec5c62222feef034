"""What a pipeline run does: the :class:`Recipe`, and which of its fields each stage reads.

Every field declares, once, the stages that read it (``metadata={"stages": ...}``); :data:`STAGE_FIELDS`
is derived from those declarations and feeds each stage's key (see :mod:`toolchain.pipeline.runner`):
changing a field re-runs the stages that read it, and every stage after them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError

STAGES = ("baseline", "prune", "search", "distill", "export", "quantize", "profile", "compare", "report")

# the fields every stage that measures on the target reads (through context.profile_options)
_MEASURED = ("baseline", "search", "profile", "compare")


def _feeds(default: Any, *stages: str) -> Any:
    """A Recipe field read by ``stages``."""
    return field(default=default, metadata={"stages": stages})


@dataclass(frozen=True)
class Recipe:
    """What a run does. ``toolchain pipeline --recipe recipe.toml`` sets any of these fields; a TOML
    table (``[prune]``, ``[distill]`` ...) is a grouping for the reader only: keys are these names."""

    samples: int = _feeds(4000, "baseline")  # taken from the data; a quarter is held out for evaluation
    seq_len: int = _feeds(128, "baseline", "search", "profile", "compare")
    # the columns (CSV) or keys (JSON Lines) of the text and the label in a user's data file
    text_field: str = _feeds("text", "baseline")
    label_field: str = _feeds("label", "baseline")
    # prune
    importance: str = _feeds("energy", "prune")
    target_energy_reduction: float = _feeds(0.8, "prune")
    # points, for the artifact the pipeline delivers (checked by the scheduler)
    max_accuracy_drop: float = _feeds(1.0, "prune", "search")
    # pruning may go this many times max_accuracy_drop below the baseline: distillation wins accuracy back,
    # so the trajectory's later points are candidates too; the scheduler keeps only those within the budget
    prune_budget: float = _feeds(2.0, "prune")
    prune_step: float = _feeds(0.1, "prune")
    finetune_epochs: int = _feeds(1, "prune")
    max_steps: int = _feeds(20, "prune")
    # distill
    distill_epochs: int = _feeds(2, "search", "compare")
    alpha: float = _feeds(0.7, "search", "compare")
    # None: distill's default for the model's family (5e-5 for transformers, 1e-3 otherwise)
    distill_lr: float | None = _feeds(None, "search", "compare")
    # the "distillation only" student: every layer at this share of its width
    # (0.7: about half the parameters, the half-size student SuComp compares with)
    distill_only_width: float = _feeds(0.7, "compare")
    # quantize
    calib_samples: int = _feeds(256, "search", "compare")
    # search (the scheduler): candidates = pruning points x temperatures x INT8 configurations
    # pruning ratios taken from the pruning trajectory (the last kept step included): the prune stage
    # writes them as its candidates
    search_points: int = _feeds(3, "prune")
    search_temperatures: tuple[float, ...] = _feeds((2.0, 4.0), "search", "compare")
    search_quant: int = _feeds(2, "search")  # the target preset's first static INT8 configurations
    # FP32 is a candidate too: where INT8 costs more energy on the target (measured), the scheduler keeps
    # FP32 for the deliverable (the INT8 artifact of the chosen student is still written and compared)
    search_fp32: bool = _feeds(True, "search")
    search_budget: int = _feeds(12, "search")  # most candidates evaluated (0: no search, the defaults above)
    w_accuracy: float = _feeds(1.0, "search")  # objective weights (see search.choose())
    w_energy: float = _feeds(1.0, "search")
    w_carbon: float = _feeds(1.0, "search")
    # the grid at which the carbon term weighs w_carbon (world 2022)
    reference_carbon_g_per_kwh: float = _feeds(436.0, "search")
    # measure
    meter: str | None = _feeds(None, *_MEASURED)  # None: the target's
    # samples per call when measuring; J/inference = J per call / batch (per sample), latency per call. 32 measures the model's work
    # rather than ONNX Runtime's per-call overhead, which dominates a sub-millisecond model at batch 1
    batch: int = _feeds(32, *_MEASURED, "report")
    repeats: int = _feeds(5, *_MEASURED)
    window_s: float = _feeds(1.0, *_MEASURED)
    idle_s: float | None = _feeds(None, *_MEASURED)
    profile_runs: int = _feeds(20, "baseline", "profile", "compare")  # the search profiles 2 runs of its own
    seed: int = _feeds(0, "baseline", "prune", "search", "compare")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
        """The recipe of a TOML file (or the defaults, without ``path``), with ``overrides`` (None values
        ignored) on top; raises :class:`ToolchainError` for an unreadable file, an unknown key or a value
        out of range."""
        data: dict[str, Any] = {}
        if path:
            try:
                raw = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ToolchainError(f"{path}: not a readable recipe ({str(exc).splitlines()[0]})") from None
            for key, value in raw.items():
                data.update(value if isinstance(value, dict) else {key: value})
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ToolchainError(f"recipe: unknown key {unknown[0]!r}", hint=f"keys: {', '.join(known)}")
        if isinstance(data.get("search_temperatures"), list):
            data["search_temperatures"] = tuple(data["search_temperatures"])
        return cls(**data)

    def validate(self) -> None:
        """Raise :class:`ToolchainError` for a value of the wrong type or out of range (run on construction)."""
        for f in fields(self):
            _check_type(f.name, str(f.type), getattr(self, f.name))
        for name in ("target_energy_reduction", "prune_step", "distill_only_width"):
            if not 0 < getattr(self, name) < 1:
                raise ToolchainError(f"recipe: {name} {getattr(self, name)} is out of range (0, 1)")
        if not 0 < self.prune_budget <= 5:
            raise ToolchainError(f"recipe: prune_budget {self.prune_budget} is out of range (0, 5]")
        if self.max_accuracy_drop <= 0 or self.samples < 8 or self.repeats < 2 or self.batch < 1:
            raise ToolchainError("recipe: max_accuracy_drop must be > 0, samples >= 8, repeats >= 2 and batch >= 1")
        if self.search_points < 1 or self.search_quant < 1 or not self.search_temperatures or self.search_budget < 0:
            raise ToolchainError("recipe: search_points and search_quant must be >= 1, search_temperatures non-empty, "
                                 "search_budget >= 0")
        if min(self.search_temperatures) <= 0 or min(self.w_accuracy, self.w_energy, self.w_carbon) < 0:
            raise ToolchainError("recipe: temperatures must be > 0 and weights >= 0")

    def stage_config(self, stage: str) -> dict[str, Any]:
        """The fields ``stage`` reads, with their values (part of the stage's key)."""
        return {name: getattr(self, name) for name in STAGE_FIELDS[stage]}


_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
    "bool": ((bool,), "true or false")}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """Raise :class:`ToolchainError` where ``value`` does not fit the field's ``annotation`` (``int``,
    ``float``, ``str``, ``bool``, ``X | None``, ``tuple[float, ...]``): a recipe's TOML says ``"3"`` for 3."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    kind = kinds[0]
    if kind.startswith("tuple["):
        inner = kind[len("tuple["):].split(",")[0].strip()
        types, what = _KINDS[inner]
        if isinstance(value, (tuple, list)) and all(isinstance(v, types) and not isinstance(v, bool) for v in value):
            return
        what = f"a list of {what.removeprefix('an ').removeprefix('a ')}s"
    else:
        types, what = _KINDS[kind]
        if isinstance(value, types) and (kind == "bool" or not isinstance(value, bool)):
            return
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    optional = " (or absent)" if "None" in kinds else ""
    raise ToolchainError(f"recipe: {name} must be {what}{optional}, not {shown}")


def _stage_fields() -> dict[str, tuple[str, ...]]:
    declared = {f.name: tuple(f.metadata.get("stages", ())) for f in fields(Recipe)}
    for name, stages in declared.items():
        if not stages or set(stages) - set(STAGES):
            raise TypeError(f"Recipe.{name}: declare the stages that read it, among {STAGES}")
    return {stage: tuple(name for name, stages in declared.items() if stage in stages) for stage in STAGES}


# recipe fields each stage reads, from the fields' declarations (a stage's key also covers the stages before it)
STAGE_FIELDS: dict[str, tuple[str, ...]] = _stage_fields()
