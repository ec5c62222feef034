"""Stage 3, PyTorch -> ONNX: the exporter with its parity check (:mod:`~toolchain.export.exporter`), the
node-to-module map built at export (:mod:`~toolchain.export.nodemap`; the read side is
:mod:`toolchain.formats.nodemap`) and ``inspect`` (:mod:`~toolchain.export.describe`)."""
