"""Stage 5, an execution provider + a power meter -> a cost table (ONNX only: never imports torch).
:mod:`~toolchain.profile.measure` (energy windows with an idle baseline and the other-load check),
:mod:`~toolchain.profile.trace` (ORT's per-node profiler), :mod:`~toolchain.profile.attribution` (nodes ->
modules or ONNX nodes, MACs and bytes, the time-share energy split), :mod:`~toolchain.profile.nodes`
(rows per ONNX node for a model without the node-to-module map), :mod:`~toolchain.profile.fused`
(subgraphs a provider compiled into one kernel), :mod:`~toolchain.profile.deltas` (a comparison's
per-layer deltas), :mod:`~toolchain.profile.options` and :mod:`~toolchain.profile.run` (profile one model,
compare models x targets)."""
