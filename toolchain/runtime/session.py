"""ONNX Runtime sessions for a set of execution providers, and which providers really work here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort

# short names a user may type -> ONNX Runtime's provider names
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "azure": "AzureExecutionProvider",
}
KNOWN_PROVIDERS = sorted(set(PROVIDER_ALIASES.values()))


def provider_name(name: str) -> str:
    """``cuda`` or ``CUDAExecutionProvider`` -> ``CUDAExecutionProvider``; unknown names raise."""
    if name in KNOWN_PROVIDERS:
        return name
    full = PROVIDER_ALIASES.get(name.lower())
    if full is None:
        raise ToolchainError(f"unknown execution provider {name!r}",
                             hint=f"choose one of {', '.join(sorted(PROVIDER_ALIASES))}")
    return full


def max_threads() -> int:
    """The most intra-op threads a session may get here: this machine's logical cores (``os.cpu_count()``).
    More threads than cores only oversubscribe the CPU; a huge count (100000) made ONNX Runtime create
    thousands of threads and gigabytes of stacks before it failed."""
    return os.cpu_count() or 1


def check_threads(threads: Any, where: str = "threads") -> int | None:
    """``threads`` checked against this machine: None or 0 (ONNX Runtime's default) or 1..:func:`max_threads`.
    Anything else raises a one-line :class:`ToolchainError` naming ``where`` and the limit."""
    if threads is None:
        return None
    limit = max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ToolchainError(f"{where} must be a whole number from 1 to {limit} (0 or none: ONNX Runtime's "
                             f"default), not {threads!r}")
    if threads > limit:
        raise ToolchainError(f"{where} = {threads} is more than this machine's {limit} CPU cores",
                             hint=f"use at most {limit}, or 0 for ONNX Runtime's default")
    return threads


def threads_used(threads: int | None) -> int:
    """The intra-op threads a CPU session created with ``threads`` actually runs: ``threads``, or for
    None/0 ONNX Runtime's default, one per logical core here (:func:`max_threads`)."""
    return threads or max_threads()


# The ONE rule for sessions that are timed alternately (A B A B ..., :mod:`toolchain.runtime.timing`):
# thread-pool spinning off. A session's workers spin for a while after each run waiting for work; with
# two sessions alternated on few cores the idle one's spinning workers steal the other's cores (ResNet-50
# FP32 batch 1 on 2 cores: 60.6 ms alternated against 29.2 ms alone; with spinning off, 28.7 ms).
ALTERNATING_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def create_session(model: str | os.PathLike | bytes, providers: list[str] | None = None, *,
                   threads: int | None = None, optimization: str = "all",
                   profile_prefix: str | None = None, optimized_model_path: str | None = None,
                   provider_options: list[dict[str, Any]] | None = None,
                   session_config: dict[str, str] | None = None,
                   alternating: bool = False) -> ort.InferenceSession:
    """An ``InferenceSession`` on ``providers`` (default CPU). ``optimization`` is ``disable``, ``basic``,
    ``extended`` or ``all``. ``alternating=True`` for a session timed alternately with others (every
    latency the tool reports where sessions alternate): its thread pools do not spin
    (:data:`ALTERNATING_CONFIG`, applied over ``session_config``). Raises :class:`ToolchainError` for a missing or corrupt model, and when a
    requested provider is not actually used (onnxruntime silently falls back to CPU otherwise), and for
    a thread count above this machine's cores (:func:`check_threads`: the last line of defence)."""
    threads = check_threads(threads)
    import onnxruntime as ort

    names = [provider_name(p) for p in (providers or ["cpu"])]
    so = ort.SessionOptions()
    so.log_severity_level = 4  # our own one-line errors say what failed
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        so.intra_op_num_threads = threads
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    config = {**(session_config or {}), **(ALTERNATING_CONFIG if alternating else {})}
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ToolchainError(f"{model}: no such ONNX file")
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                       providers=names, provider_options=provider_options)
    except Exception as exc:
        raise ToolchainError(f"{'model' if isinstance(model, bytes) else model}: ONNX Runtime cannot load it "
                             f"({one_line(exc)})") from None
    missing = [p for p in names if p not in session.get_providers()]
    if missing:
        raise ToolchainError(f"execution provider {missing[0]} is not usable here: ONNX Runtime fell back to "
                             f"{', '.join(session.get_providers())}", hint="run `toolchain doctor` to see why")
    return session


@dataclass(frozen=True)
class ProviderStatus:
    """Whether an execution provider is compiled in (``available``) and actually runs a session (``usable``)."""

    name: str
    available: bool
    usable: bool
    reason: str = ""


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def provider_statuses() -> list[ProviderStatus]:
    """Every provider this onnxruntime build lists, probed with a one-node session.

    onnxruntime-gpu lists CUDA and TensorRT even without a GPU and silently falls back to CPU, so
    ``available`` alone proves nothing: ``usable`` is True only when the session really kept the provider."""
    import onnxruntime as ort

    model = _tiny_model()
    out = []
    for name in ort.get_available_providers():
        if name == "AzureExecutionProvider":  # ships with every build; it calls remote endpoints
            out.append(ProviderStatus(name, True, False, "calls remote inference endpoints; it does not run local models"))
            continue
        try:
            session = ort.InferenceSession(model, providers=[name])
            kept = name in session.get_providers()
            out.append(ProviderStatus(name, True, kept, "" if kept else "listed, but the session fell back to "
                                      + ", ".join(session.get_providers())))
        except Exception as exc:
            out.append(ProviderStatus(name, True, False, one_line(exc)))
    return out
