"""Stage 1, structural pruning (torch + Torch-Pruning).

Other packages import the public API from here (the package), never from its modules.
"""

from toolchain.prune.engine import (
    PruneConfig,
    PruneResult,
    apply_pruning,
    attention_blocks,
    costs_for,
    count_params,
    example_args,
    module_work,
    output_layer,
    predict_costs,
    prune_model,
    prune_transformer_units,
    run_prune_command,
    save_pruned,
    transformer_units,
)

__all__ = ["PruneConfig", "PruneResult", "apply_pruning", "attention_blocks", "costs_for", "count_params",
           "example_args", "module_work", "output_layer", "predict_costs", "prune_model", "prune_transformer_units",
           "run_prune_command", "save_pruned", "transformer_units"]
