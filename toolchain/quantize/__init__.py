"""Stage 4, ONNX Runtime INT8 quantization (ONNX only: never imports torch).

Other packages import the public API from here (the package), never from its modules.
"""

from toolchain.quantize.engine import (
    QuantizeResult,
    auto_quantize,
    compare_models,
    guard_accuracy,
    model_type,
    quantize_model,
    run_quantize_command,
)

__all__ = ["QuantizeResult", "auto_quantize", "compare_models", "guard_accuracy", "model_type", "quantize_model",
           "run_quantize_command"]
