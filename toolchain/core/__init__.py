"""Layer 0, standard library and numpy only: typed errors, statistics, file writes (one atomic publish
primitive), this host (one cpuinfo parser, versions, the host rule) and reading ONNX files' graph inputs
and metadata. Everything else may import core; core imports nothing of the toolchain above it."""
