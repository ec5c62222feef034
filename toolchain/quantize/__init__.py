"""Stage 4, ONNX Runtime INT8 quantization (ONNX only: never imports torch).

The flow, one module a step: :mod:`~toolchain.quantize.static` quantizes one model (transformer
fusions, ``quant_pre_process``, static or dynamic INT8, metadata stamp), :mod:`~toolchain.quantize.qdq`
compacts what ORT's QDQ quantizer wrote, :mod:`~toolchain.quantize.measure` times and compares INT8
against FP32, :mod:`~toolchain.quantize.auto` chooses among a preset's candidates (``--auto``),
:mod:`~toolchain.quantize.guard` keeps sensitive nodes in FP32 until the accuracy budget holds
(:mod:`~toolchain.quantize.sensitivity` ranks them by the output error they cause per share of compute), and
:mod:`~toolchain.quantize.job` runs the ``toolchain quantize`` job (:class:`QuantizeJob`) as data.

Other packages import the public API from here (the package), never from its modules; the modules
import each other directly.
"""

from toolchain.quantize.auto import AutoResult, Candidate, auto_quantize
from toolchain.quantize.guard import GuardStep, guard_accuracy, matmul_sensitivity, sensitive_nodes
from toolchain.quantize.job import BudgetError, QuantizeJob, run_quantize
from toolchain.quantize.measure import speed_and_fidelity
from toolchain.quantize.qdq import compact_qdq
from toolchain.quantize.sensitivity import Fallback, Ranking, rank_fallbacks
from toolchain.quantize.static import QUANT_KEY, QuantizeResult, model_type, quantize_model

__all__ = ["QUANT_KEY", "AutoResult", "BudgetError", "Candidate", "Fallback", "GuardStep", "Ranking", "QuantizeJob", "QuantizeResult",
           "auto_quantize", "compact_qdq", "speed_and_fidelity", "guard_accuracy", "matmul_sensitivity", "model_type",
           "quantize_model", "rank_fallbacks", "run_quantize", "sensitive_nodes"]
