"""Layer 1, pure JSON/CSV: the on-disk contracts between stages, with typed accessors. The cost table
(:mod:`~toolchain.formats.costs`), the node-to-module map (:mod:`~toolchain.formats.nodemap`), the
pipeline's manifest (:mod:`~toolchain.formats.manifest`) and the pruned-model directory
(:mod:`~toolchain.formats.pruned`). No torch, no onnxruntime."""
