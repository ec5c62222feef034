"""Stage 1, structural pruning (torch + Torch-Pruning), with measured cost tables deciding what is cut.

The flow, one module each:

* :mod:`~toolchain.prune.importance` -- the registry of criteria (:data:`IMPORTANCES`: name -> builder
  of a Torch-Pruning importance) and the weight-norm term of the energy index;
* :mod:`~toolchain.prune.config` -- :class:`PruneConfig` (what to cut, when to stop), :class:`PruneResult`;
* :mod:`~toolchain.prune.graph` -- Torch-Pruning's dependency graph: groups, one cut
  (:func:`apply_pruning`);
* :mod:`~toolchain.prune.units` -- transformer heads and MLP neurons: found, scored (magnitude, Taylor),
  cut by direct surgery; :mod:`~toolchain.prune.unitstep` -- the per-unit step (one energy-aware
  ranking of heads and MLP groups across layers, or uniform) and its cost prediction;
* :mod:`~toolchain.prune.costs` -- the cost table per module and its prediction after a cut;
* :mod:`~toolchain.prune.netadapt` -- the loop (:func:`prune_model`: cut, fine-tune, evaluate, roll
  back) and its energy-aware NetAdapt step;
* :mod:`~toolchain.prune.save` -- the pruned model directory (:func:`save_pruned`);
* :mod:`~toolchain.prune.job` -- ``toolchain prune`` as a library call (:class:`PruneJob`,
  :func:`run_prune`).

Other packages import the public API from here (the package), never from its modules; nothing here
imports torch at import time.
"""

from toolchain.prune.config import PruneConfig, PruneResult, StepRecord
from toolchain.prune.costs import costs_for, count_macs, count_params, module_work, predict_costs, table_costs
from toolchain.prune.graph import apply_pruning, example_args, output_layer, prune_transformer_units
from toolchain.prune.importance import ENERGY, IMPORTANCES
from toolchain.prune.job import PruneJob, PruneReport, Reprofile, run_prune
from toolchain.prune.netadapt import prune_model
from toolchain.prune.save import save_pruned
from toolchain.prune.units import attention_blocks, transformer_units

__all__ = ["ENERGY", "IMPORTANCES", "PruneConfig", "PruneJob", "PruneReport", "PruneResult", "Reprofile", "StepRecord",
           "apply_pruning", "attention_blocks", "costs_for", "count_macs", "count_params", "example_args",
           "module_work", "output_layer", "predict_costs", "prune_model", "prune_transformer_units", "run_prune",
           "save_pruned", "table_costs", "transformer_units"]
