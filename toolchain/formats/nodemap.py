"""The node-to-module map: for every ONNX node, the PyTorch module it came from.

It is built once at export (:func:`build_node_map`) and stored as JSON in the model's ``metadata_props``
under :data:`MAP_KEY`. ONNX Runtime's quantizer keeps ``metadata_props``, so the map travels with the
FP32 model into its INT8 QDQ version.

ORT's profiler reports the names of *optimized* nodes, not the exported ones: NCHWc convolutions are
named ``<tensor>_nchwc`` after the output of a fused activation, fused QDQ nodes ``<node>_token_N``,
duplicated DequantizeLinear nodes ``<name>/duplicated``, layout Transposes and fusions get fresh names.
:meth:`NodeModuleMap.resolve` undoes this: it strips ORT's suffixes and looks the rest up as a node or
tensor name, walks from a fused activation back to the Conv/MatMul it was fused into, and, given the
optimized graph ORT wrote (:class:`OptimizedGraph`), resolves a node by its output tensors, its weights,
or its neighbours.

Module names are those of the user's model (``encoder.layer.0.attention.self.query``); ``""`` is the model
itself (top-level ops such as mask arithmetic). After Conv+BatchNorm folding, a Conv carries the
BatchNorm's scope; the map resolves it to the Conv that feeds the BatchNorm.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnx

MAP_KEY = "toolchain.node_module_map"
MAP_VERSION = 1
ROOT = ""

# ORT suffixes, stripped repeatedly (longest first within one pass).
_SUFFIXES = [
    re.compile(r"/duplicated$"),
    re.compile(r"/[A-Za-z]*Fusion[A-Za-z]*/?$"),  # node_MatMul_127/MatMulScaleFusion/
    re.compile(r"_kernel_time$"),
    re.compile(r"_token_\d+$"),
    re.compile(r"_nchwc$"),
    re.compile(r"_(QuantizeLinear|DequantizeLinear)(_Output)?$"),
    re.compile(r"_(quantized|scale|zero_point|quant|dequant|q|dq)$"),
    re.compile(r"_output_\d+$"),
    re.compile(r"_out\d+$"),
]

CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "ConvTranspose", "NhwcFusedConv"}
MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QGemm", "QLinearMatMul",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "MatMulFpQ4"}
COMPUTE_OPS = CONV_OPS | MATMUL_OPS
# ops that ORT fuses into a preceding Conv/MatMul (activation, bias, residual sum, folded BatchNorm)
FUSABLE_OPS = {"Relu", "Clip", "Add", "Sum", "Mul", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
            "Gelu", "Erf", "Div", "BatchNormalization", "Identity", "Cast", "QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class Resolution:
    """Where a profiled node came from: ``module`` (``""`` is the model itself) and ``method``, how it was
    found (``node``, ``tensor``, ``fused``, ``weight``, ``neighbour``, ``scope``)."""

    module: str
    method: str


@dataclass
class NodeModuleMap:
    """``modules``: module path -> class name. ``nodes``: ONNX node name -> (module path or None, op type).
    ``tensors``: tensor name -> name of the node that produces it (for initializers and graph inputs,
    the first node that consumes it). ``fused_from``: activation node -> the Conv/MatMul node it follows,
    for ORT's Conv+activation fusions."""

    modules: dict[str, str]
    nodes: dict[str, tuple[str | None, str]]
    tensors: dict[str, str]
    fused_from: dict[str, str] = field(default_factory=dict)
    exporter: str = ""
    prefix: str = "model."  # the export wrapper's attribute, stripped from module paths

    # ---------------------------------------------------------------- serialisation
    def to_json(self) -> str:
        index = {name: i for i, name in enumerate(self.modules)}
        return json.dumps({
            "version": MAP_VERSION, "exporter": self.exporter, "prefix": self.prefix,
            "modules": [[m, c] for m, c in self.modules.items()],
            "nodes": {n: [index[m] if m is not None else -1, op] for n, (m, op) in self.nodes.items()},
            "tensors": self.tensors, "fused_from": self.fused_from,
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> NodeModuleMap:
        data = json.loads(text)
        if data.get("version") != MAP_VERSION:
            raise ValueError(f"node-to-module map version {data.get('version')} is not {MAP_VERSION}")
        names = [m for m, _ in data["modules"]]
        return cls(modules={m: c for m, c in data["modules"]},
                   nodes={n: (names[i] if i >= 0 else None, op) for n, (i, op) in data["nodes"].items()},
                   tensors=data["tensors"], fused_from=data.get("fused_from", {}), exporter=data.get("exporter", ""),
                   prefix=data.get("prefix", "model."))

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> NodeModuleMap | None:
        """The map stored in ``model.metadata_props``, or None if the model has none."""
        for prop in model.metadata_props:
            if prop.key == MAP_KEY:
                return cls.from_json(prop.value)
        return None

    # ---------------------------------------------------------------- lookups
    def module_of(self, node_name: str) -> str | None:
        entry = self.nodes.get(node_name)
        return entry[0] if entry else None

    def _node_for(self, name: str, op_type: str | None) -> tuple[str, str] | None:
        """A node name and method for a node or tensor ``name``, walking back to the compute node when
        ``op_type`` says the profiled kernel is a Conv/MatMul but the name is a fused activation's."""
        if name in self.nodes:
            return name, "node"
        producer = self.tensors.get(name)
        if producer is None:
            return None
        if op_type in COMPUTE_OPS and self.nodes[producer][1] not in COMPUTE_OPS and producer in self.fused_from:
            return self.fused_from[producer], "fused"
        return producer, "tensor"

    def resolve(self, name: str, op_type: str | None = None, graph: OptimizedGraph | None = None) -> Resolution | None:
        """Map a node name as ORT's profiler reports it back to a module, or None.

        ``op_type`` is the profiled kernel's op (``args.op_name``); ``graph`` is the optimized model ORT
        wrote (``SessionOptions.optimized_model_filepath``), needed for nodes whose names ORT made up.
        """
        found = self._resolve_name(name, op_type)
        if found is not None or graph is None:
            return found
        return self._resolve_in_graph(name, op_type, graph, depth=0, seen=set())

    def _resolve_name(self, name: str, op_type: str | None) -> Resolution | None:
        for variant in name_variants(name):
            hit = self._node_for(variant, op_type)
            if hit is not None:
                node, method = hit
                module = self.nodes[node][0]
                if module is not None:
                    return Resolution(module, method)
        module = self._resolve_scope(name)
        return Resolution(module, "scope") if module is not None else None

    def _resolve_scope(self, name: str) -> str | None:
        """TorchScript names carry the module scope: ``/model/encoder/layer.0/attention/self/query/MatMul``."""
        if not name.startswith("/"):
            return None
        full = {(self.prefix + m if m else self.prefix.rstrip(".")): m for m in self.modules}
        found = scope_to_module(name.strip("/").split("/")[:-1], full, prefix="")
        return full[found] if found is not None else None

    def _resolve_in_graph(self, name: str, op_type: str | None, graph: OptimizedGraph, depth: int,
                          seen: set[str]) -> Resolution | None:
        node = graph.nodes.get(name)
        if node is None or name in seen:
            return None
        seen.add(name)
        op = op_type or node["op"]
        for tensor in node["outputs"]:  # a fused node usually keeps the final tensor name
            for variant in name_variants(tensor):
                hit = self._node_for(variant, op)
                if hit is not None and self.nodes[hit[0]][0] is not None:
                    return Resolution(self.nodes[hit[0]][0], "tensor")
        for tensor in node["inputs"]:  # weights keep their initializer names unless reordered
            if tensor in graph.initializers:
                for variant in name_variants(tensor):
                    consumer = self.tensors.get(variant)
                    if consumer is not None and self.nodes[consumer][0] is not None:
                        return Resolution(self.nodes[consumer][0], "weight")
        if depth >= 4:
            return None
        # layout and glue nodes (Transpose, ReorderInput/Output, inserted Q/DQ): cost of a neighbour
        neighbours = [graph.producers[t] for t in node["inputs"] if t in graph.producers]
        neighbours = [graph.consumers.get(t, []) for t in node["outputs"]] + [neighbours]
        for group in neighbours:
            for other in group:
                found = self._resolve_name(other, None) or self._resolve_in_graph(other, None, graph, depth + 1, seen)
                if found is not None:
                    return Resolution(found.module, "neighbour")
        return None


@dataclass
class OptimizedGraph:
    """An index of an ORT-optimized graph: node name -> op, inputs, outputs; tensor producers/consumers."""

    nodes: dict[str, dict[str, Any]]
    producers: dict[str, str]
    consumers: dict[str, list[str]]
    initializers: set[str]

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> OptimizedGraph:
        nodes, producers, consumers = {}, {}, {}
        for n in model.graph.node:
            nodes[n.name] = {"op": n.op_type, "inputs": [i for i in n.input if i], "outputs": list(n.output)}
            for t in n.output:
                producers[t] = n.name
            for t in n.input:
                if t:
                    consumers.setdefault(t, []).append(n.name)
        return cls(nodes, producers, consumers, {i.name for i in model.graph.initializer})


def name_variants(name: str) -> Iterable[str]:
    """``name`` and what is left after stripping ORT suffixes one at a time."""
    seen = [name]
    current = name
    changed = True
    while changed:
        changed = False
        for pattern in _SUFFIXES:
            stripped = pattern.sub("", current)
            if stripped != current and stripped:
                current = stripped
                seen.append(current)
                changed = True
                break
    return seen


def scope_to_module(parts: list[str], modules: dict[str, str], prefix: str) -> str | None:
    """Follow TorchScript scope components to the deepest known module path.

    A component is a child name relative to the last scope, or to one of its ancestors
    (``layers.0/layer/layer.0``: ``layer.0`` hangs off ``layers.0``, not off ``layer``).
    """
    current = prefix
    matched = current if current in modules else None
    for comp in parts:
        base = current
        while True:
            candidate = f"{base}.{comp}" if base else comp
            if candidate in modules:
                current = matched = candidate
                break
            if not base:
                break
            base = base.rpartition(".")[0]
    return matched


# ------------------------------------------------------------------------------------------------------
# building the map at export time


