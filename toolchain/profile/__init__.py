"""Stage 5, an execution provider + a power meter -> a cost table (ONNX only: never imports torch).
:mod:`~toolchain.profile.measure` (energy windows with an idle baseline), :mod:`~toolchain.profile.trace`
(ORT's per-node profiler), :mod:`~toolchain.profile.attribution` (nodes -> modules, MACs and bytes, the
time-share energy split) and :mod:`~toolchain.profile.run` (profile one model, compare models x targets)."""
