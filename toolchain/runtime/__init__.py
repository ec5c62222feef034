"""Layer 2, ONNX Runtime: sessions and execution providers (:mod:`~toolchain.runtime.session`), running
a model over a data set and comparing outputs (:mod:`~toolchain.runtime.outputs`), and the ONE latency
timer (:mod:`~toolchain.runtime.timing`). Never imports torch."""
