"""What ``toolchain prune`` does, as a library call: :func:`run_prune` of a :class:`PruneJob`.

Load the model, check its cost table, prune (:func:`~toolchain.prune.netadapt.prune_model`), save
(:func:`~toolchain.prune.save.save_pruned`), and return a :class:`PruneReport`. Nothing is printed and
nothing here knows the command line.

Profiling is read only through the cost-table format (:class:`~toolchain.formats.costs.CostTable`).
Re-measuring on the target (``reprofile_every``) needs exporting and profiling, which are other stages:
the caller passes them in as a :data:`Reprofile` callable (the command builds one from
``toolchain.export`` and ``toolchain.profile``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError, option
from toolchain.formats.pruned import PRUNED_FILE, WEIGHTS_FILE, CostsUsed, DataUsed
from toolchain.prune.config import PruneConfig, PruneResult
from toolchain.prune.costs import costs_for, table_costs, table_target
from toolchain.prune.importance import ENERGY
from toolchain.prune.netadapt import prune_model
from toolchain.prune.save import save_pruned

if TYPE_CHECKING:
    from toolchain.formats.costs import CostTable
    from toolchain.model.spec import LoadedModel
    from toolchain.targets.target import Target

Reprofile = Callable[["LoadedModel", "Target", "str | None"], "CostTable"]
"""``reprofile(model, target, meter) -> CostTable``: measure ``model`` (a LoadedModel whose ``module`` is
the pruned one) on ``target`` with ``meter`` (a meter name, or None: the target's own) and return its
per-layer cost table, the same format ``toolchain profile`` writes."""


@dataclass(frozen=True)
class PruneJob:
    """One ``toolchain prune`` run; the fields are its flags (defaults the command's).

    ``model`` is a model spec (catalogue name, ``module:factory``, directory ...); ``eval_spec`` and
    ``train_spec`` data specs (``train_spec`` None: a quarter of the eval samples held out, the rest
    trained on); ``costs`` the path of a cost table; ``target_spec`` a target name or file. Exactly one of
    ``ratio``, ``target_energy_reduction``, ``target_latency_reduction`` (fractions in (0, 1));
    ``max_accuracy_drop`` in points; ``step`` a fraction (see :class:`~toolchain.prune.config.PruneConfig`);
    ``lr`` None picks the default of :class:`~toolchain.prune.config.PruneConfig`; ``round_to`` None takes
    the target's; ``seed`` seeds fine-tuning and Taylor scores (same seed and inputs, same pruned model);
    ``unit_importance`` scores transformer heads and MLP units for the energy method (l1, l2, taylor)."""

    model: str
    eval_spec: str
    output: str
    ratio: float | None = None
    target_energy_reduction: float | None = None
    target_latency_reduction: float | None = None
    importance: str = ENERGY
    costs: str | None = None
    target_spec: str | None = None
    train_spec: str | None = None
    samples: int = 2000
    max_accuracy_drop: float = 1.0
    step: float = 0.1
    alpha: float = 1.0
    beta: float = 1.0
    finetune_epochs: int = 1
    lr: float | None = None
    round_to: int | None = None
    exclude: tuple[str, ...] = ()
    reprofile_every: int = 0
    meter: str | None = None
    max_steps: int = 40
    trials: int = 3
    patience: int = 3
    weights: str | None = None
    input_shapes: tuple[str, ...] = ()
    force: bool = False
    seed: int = 0
    unit_importance: str = "l2"
    taylor_batches: int = 4

    def config(self) -> PruneConfig:
        """The :class:`PruneConfig` of this job (``round_to`` as given, before the target's default)."""
        return PruneConfig(importance=self.importance, ratio=self.ratio,
                           target_energy_reduction=self.target_energy_reduction,
                           target_latency_reduction=self.target_latency_reduction,
                           max_accuracy_drop=self.max_accuracy_drop, step=self.step, alpha=self.alpha, beta=self.beta,
                           finetune_epochs=self.finetune_epochs, lr=self.lr, round_to=self.round_to,
                           exclude=self.exclude, max_steps=self.max_steps, reprofile_every=self.reprofile_every,
                           trials=self.trials, patience=self.patience, seed=self.seed,
                           unit_importance=self.unit_importance, taylor_batches=self.taylor_batches)

    @property
    def cost_metric(self) -> str:
        """``"latency"`` for a latency target, else ``"energy"``: which column of the cost table is read."""
        return "latency" if self.target_latency_reduction is not None else "energy"


@dataclass(frozen=True)
class PruneReport:
    """What a run did: the job, the config it ran with (``round_to`` resolved), the result (with the
    pruned module), the target's name, and the files written. :meth:`to_dict` is the command's JSON."""

    job: PruneJob
    config: PruneConfig
    result: PruneResult
    target: str | None
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        j = self.job
        return {"source": j.model, "importance": j.importance, "max_accuracy_drop": j.max_accuracy_drop,
                "cost_metric": j.cost_metric, "costs": str(j.costs) if j.costs else None, "target": self.target,
                "config": asdict(self.config), "result": self.result.to_dict(), "files": [str(f) for f in self.files]}


def run_prune(job: PruneJob, reprofile: Reprofile | None = None, *,
              progress: Callable[[str], None] | None = None) -> PruneReport:
    """Run ``job``: validate it, load the model and its cost table (checked against the model and the
    target), prune, and save to ``job.output``. ``reprofile`` is required when ``job.reprofile_every``
    is set (see :data:`Reprofile`); ``progress`` gets one-line status texts. Raises a one-line
    :class:`ToolchainError` on bad input."""
    from toolchain.data.dataset import DataOptions
    from toolchain.formats.costs import CostTable
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model

    config = job.config()
    config.validate()
    out = Path(job.output)
    source = Path(job.model).expanduser()
    source_dirs = [str(source)] if source.is_dir() else []  # a pruned or transformers directory as the model
    check_not_input(out, [str(source)] if source.is_file() else [], source_dirs, job.output)  # before loading
    if (out / PRUNED_FILE).exists() and not job.force:
        raise ToolchainError(f"{out / PRUNED_FILE} already exists", hint=f"pass {option('--force', 'force=True')} to overwrite it")
    target = None
    if job.target_spec:
        from toolchain.targets.target import load_target

        target = load_target(job.target_spec)
        if config.round_to is None:
            config = replace(config, round_to=target.round_to)
    input_shapes = list(job.input_shapes) or None
    loaded = load_model(job.model, weights=job.weights, input_shapes=input_shapes)
    check_not_input(out, loaded.input_paths, source_dirs, job.output)
    metric = job.cost_metric
    table = per_module = None
    if job.costs:
        table = CostTable.load(job.costs)
        per_module = costs_for(table, loaded, module=loaded.module, target_name=target.name if target else None,
                               metric=metric)
        if target is None:  # no target given: the table's is the one pruned for, and it is named
            target = _table_target(table, progress)
            if target is not None and config.round_to is None:
                config = replace(config, round_to=target.round_to)
    data = load_dataset_for(job.eval_spec, loaded, DataOptions(samples=job.samples))
    if job.train_spec:
        train_data, eval_data = load_dataset_for(job.train_spec, loaded, DataOptions(samples=job.samples)), data
    else:
        held = max(1, len(data) // 4)
        train_data, eval_data = data.take(held, None), data.take(0, held)
    measure = None
    if job.reprofile_every:
        if target is None or table is None:
            raise ToolchainError(f"{option('--reprofile-every', 'reprofile_every')} needs {option('--target', 'target_spec')} and {option('--costs', 'costs')} (it re-measures there)")
        if reprofile is None:
            raise ToolchainError("reprofile_every needs a reprofile callable (export and profile on the target)")
        measure = _per_module(reprofile, loaded, target, job.meter or table.meter.get("name"), metric)
    result = prune_model(loaded, config, train_data, eval_data, costs=per_module, reprofile=measure, progress=progress)
    if config.ratio is not None and not result.steps[-1].kept:
        lost = result.base_metric - result.steps[-1].accuracy
        raise ToolchainError(
            f"{option(f'--ratio {config.ratio:g}', f'ratio={config.ratio:g}')} loses {lost:.2f} points of "
            f"{result.metric_name} ({result.base_metric:.2f} -> {result.steps[-1].accuracy:.2f}), over the budget "
            f"{option(f'--max-accuracy-drop {config.max_accuracy_drop:g}', f'max_accuracy_drop={config.max_accuracy_drop:g}')}"
            f"; nothing written",
            hint=f"lower {option('--ratio', 'ratio')}, loosen {option('--max-accuracy-drop', 'max_accuracy_drop')}, "
                 f"or give {option('--target-energy-reduction', 'target_energy_reduction')} to prune in steps that "
                 "stop at the budget")
    target_name = target.name if target else None
    extra = {"weights": job.weights, "input_shapes": input_shapes, "target": target_name,
             "costs": CostsUsed(path=str(job.costs), model_sha256=table.model.get("sha256"), meter=table.meter,
                                method=table.method) if table else None,
             "data": DataUsed(eval=job.eval_spec, train=job.train_spec, samples=job.samples)}
    files = save_pruned(result, loaded, job.model, out, config, extra, force=job.force)
    return PruneReport(job=job, config=config, result=result, target=target_name, files=files)


def check_not_input(out: str | Path, input_paths: list[str], input_dirs: list[str], shown: str | None = None) -> None:
    """Refuse (even with ``force``) an output directory ``out`` that would write over what the model is read
    from: ``out`` equal to, inside, or holding an input directory (``input_dirs``, and the directory of
    every ``pruned.json`` among ``input_paths``: a pruned model chain), or ``out`` being an input file or
    the place of one of the files written there."""
    final = Path(out).expanduser().resolve()
    files = [Path(p).expanduser().resolve() for p in input_paths if p]
    dirs = [Path(d).expanduser().resolve() for d in input_dirs if d]
    dirs += [f.parent for f in files if f.name == PRUNED_FILE]
    for d in dirs:
        if final == d or d in final.parents or final in d.parents:
            how = "is" if final == d else "is inside" if d in final.parents else "holds"
            raise ToolchainError(f"{shown or out}: refusing to write there, it {how} the input {d}; "
                                 f"choose another {option('-o', 'output')}")
    for f in files:
        if final == f or (f.parent == final and f.name in (PRUNED_FILE, WEIGHTS_FILE)):
            raise ToolchainError(f"{shown or out}: refusing to overwrite an input ({f}); "
                                 f"choose another {option('-o', 'output')}")


def _per_module(reprofile: Reprofile, loaded: LoadedModel, target: Target, meter: str | None,
                metric: str) -> Callable[[Any], dict[str, float]]:
    """``reprofile`` as :func:`prune_model` calls it: module -> per-module cost (J or ms per inference)."""
    def measure(module) -> dict[str, float]:
        return table_costs(reprofile(replace(loaded, module=module), target, meter), metric)

    return measure


def _table_target(table: CostTable, progress: Callable[[str], None] | None):
    """The target a cost table was measured on (by its file when it still exists, else by name), or None
    when it cannot be loaded here (a custom target file that is gone): costs_for has checked its name."""
    from toolchain.targets.target import load_target

    name = table_target(table, None)
    path = table.target.get("path")
    try:
        target = load_target(path if path and Path(path).is_file() else name)
    except ToolchainError:
        return None
    if progress:
        progress(f"target {target.name!r} (from the cost table)")
    return target
