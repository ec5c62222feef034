"""toolchain: prune, distill, export to ONNX, quantize to INT8 and profile per-layer energy.

Importing this package is cheap: torch, onnxruntime and transformers are imported only by the modules
that need them (``toolchain.models``, ``toolchain.export`` ...), never here.
"""

__version__ = "0.1.0"

from toolchain.core.errors import ToolchainError

__all__ = ["ToolchainError", "__version__"]
