"""Layer 2, stage 0 (torch): where a model comes from. :mod:`~toolchain.model.spec` (InputSpec,
LoadedModel), :mod:`~toolchain.model.load` (a source string -> LoadedModel), :mod:`~toolchain.model.catalogue`
(built-in models), :mod:`~toolchain.model.hf` (transformers directories and configs),
:mod:`~toolchain.model.forward` (the export wrapper, example inputs, running in PyTorch),
:mod:`~toolchain.model.pruned` (directories written by ``toolchain prune``) and
:mod:`~toolchain.model.data` (a data spec read for a PyTorch model)."""
