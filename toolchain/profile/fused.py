"""Kernels an execution provider compiled from a whole subgraph (OpenVINO, TensorRT, ...): ORT's profiler
sees one node for the subgraph, so its time cannot be split per layer. Such a kernel is one row of the
cost table, saying which provider fused it and, when it can be known, which ONNX nodes it covers.

Recognised by name: OpenVINO's events are ``OpenVINOExecutionProvider_OpenVINO-EP-subgraph_<k>_0`` (op
``OpenVINO-EP-subgraph_<k>``), TensorRT's ``TRTKernel_graph_...``; and any kernel named like a node of the
EP context model (below), or run by a provider other than CPU/CUDA/ROCm under an op name ONNX does not
define. Coverage comes from the EP context model ORT writes for compiling providers
(``ep.context_enable``): each ``EPContext`` node names the subgraph's boundary tensors, and the ONNX nodes
between them in the original graph are what it covers. Without that model, the coverage is "not known".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import onnx

# provider name -> the short name rows use
PROVIDER_NAMES = {"OpenVINOExecutionProvider": "OpenVINO", "TensorrtExecutionProvider": "TensorRT",
                  "QNNExecutionProvider": "QNN", "CoreMLExecutionProvider": "CoreML", "DmlExecutionProvider": "DirectML",
                  "MIGraphXExecutionProvider": "MIGraphX", "VitisAIExecutionProvider": "Vitis AI"}
_PATTERNS = [(re.compile(r"OpenVINO-EP-subgraph_\d+"), "OpenVINO"), (re.compile(r"TRTKernel_"), "TensorRT")]
# providers that run ORT's own per-op kernels (never a compiled subgraph)
_PER_OP_PROVIDERS = {"CPUExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "XnnpackExecutionProvider",
                     "AzureExecutionProvider", ""}


@dataclass(frozen=True)
class FusedSubgraph:
    """A compiled subgraph as the EP context model shows it: its node name and boundary tensors."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def short_provider(provider: str) -> str:
    """``OpenVINOExecutionProvider`` -> ``OpenVINO`` (unknown ones lose their ``ExecutionProvider`` suffix)."""
    return PROVIDER_NAMES.get(provider, provider.removesuffix("ExecutionProvider") or "an execution provider")


def fused_by(name: str, op_type: str, provider: str, context: dict[str, FusedSubgraph] | None = None) -> str | None:
    """The provider (short name) that ran the profiled kernel ``name`` as a compiled subgraph, or None for
    an ordinary per-op kernel."""
    for pattern, ep in _PATTERNS:
        if pattern.search(name) or pattern.search(op_type):
            return short_provider(provider) if provider else ep
    if context and name in context:
        return short_provider(provider)
    if provider not in _PER_OP_PROVIDERS and op_type and not _onnx_op(op_type):
        return short_provider(provider)
    return None


def _onnx_op(op_type: str) -> bool:
    import onnx

    return onnx.defs.has(op_type)


def context_subgraphs(context_model: onnx.ModelProto | None) -> dict[str, FusedSubgraph]:
    """The ``EPContext`` nodes of an EP context model, by node name (which is the profiled kernel's name)."""
    if context_model is None:
        return {}
    return {n.name: FusedSubgraph(n.name, tuple(t for t in n.input if t), tuple(n.output))
            for n in context_model.graph.node if n.op_type == "EPContext"}


def covered_nodes(model: onnx.ModelProto, names: list[str], sub: FusedSubgraph) -> list[str] | None:
    """The nodes of ``model`` (named by ``names``, graph order) between ``sub``'s boundary tensors: every
    node upstream of its outputs, stopping at its inputs and initializers. None when the boundary does
    not match the graph (an output no node produces, or a walk that reaches a graph input that is not
    one of the subgraph's inputs): the coverage is then not known."""
    producer = {t: i for i, node in enumerate(model.graph.node) for t in node.output}
    stop = set(sub.inputs) | {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    seen: set[int] = set()
    stack = list(sub.outputs)
    if not stack or any(t not in producer for t in stack):
        return None
    while stack:
        t = stack.pop()
        if t in stop or not t:
            continue
        if t not in producer:
            if t in graph_inputs:
                return None
            continue
        i = producer[t]
        if i not in seen:
            seen.add(i)
            stack.extend(model.graph.node[i].input)
    return [names[i] for i in sorted(seen) if model.graph.node[i].op_type != "Constant"]
