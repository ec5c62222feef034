"""Rows per ONNX node, for a model without the export's node-to-module map (one exported by Optimum, a
user's own ``torch.onnx.export`` script, a model zoo).

:func:`node_map` builds a :class:`~toolchain.formats.nodemap.NodeModuleMap` in which every ONNX node is its
own "module", so that the profiler's optimized kernel names resolve back to the file's nodes by the same
rules as for exported models (ORT's suffixes stripped, fused activations walked back to their Conv/MatMul,
names ORT made up resolved through the optimized graph). Nodes without a name are named as ORT's profiler
names them: ``<op type>_<index>``, the index counting the graph's nodes other than ``Constant``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolchain.formats.nodemap import COMPUTE_OPS, FUSABLE_OPS, NodeModuleMap

if TYPE_CHECKING:  # pragma: no cover
    import onnx


def node_names(model: onnx.ModelProto) -> list[str]:
    """The name of every node of ``model`` in graph order: its own, else ``<op type>_<index>`` as ORT's
    profiler names an unnamed node (``Constant`` nodes, which ORT turns into initializers, not counted)."""
    names, index = [], 0
    for node in model.graph.node:
        names.append(node.name or f"{node.op_type}_{index}")
        index += node.op_type != "Constant"
    return names


def node_map(model: onnx.ModelProto) -> NodeModuleMap:
    """A map of ``model`` whose modules are its ONNX nodes (module path = node name, class = op type)."""
    names = node_names(model)
    nodes = {name: (name, node.op_type) for name, node in zip(names, model.graph.node, strict=True)}
    tensors: dict[str, str] = {}
    for name, node in zip(names, model.graph.node, strict=True):
        for t in node.output:
            tensors[t] = name
    for name, node in zip(names, model.graph.node, strict=True):
        for t in node.input:
            if t and t not in tensors:
                tensors[t] = name  # initializers and graph inputs: their first consumer
    return NodeModuleMap(modules={name: op for name, (_, op) in nodes.items()}, nodes=nodes, tensors=tensors,
                         fused_from=fused_sources(model, names, tensors), exporter="", prefix="")


def fused_sources(model: onnx.ModelProto, names: list[str], tensors: dict[str, str]) -> dict[str, str]:
    """For each node ORT may fuse into a Conv/MatMul (an activation, a bias or residual add), the compute
    node upstream of it, at most three fusable hops away (first inputs first)."""
    op = {name: node.op_type for name, node in zip(names, model.graph.node, strict=True)}
    inputs = {name: [t for t in node.input if t] for name, node in zip(names, model.graph.node, strict=True)}
    result: dict[str, str] = {}
    for name in names:
        if op[name] not in FUSABLE_OPS:
            continue
        frontier = [name]
        for _ in range(3):
            producers = [tensors[t] for n in frontier for t in inputs[n] if tensors.get(t) not in (None, n)]
            compute = next((p for p in producers if op[p] in COMPUTE_OPS), None)
            if compute is not None:
                result[name] = compute
                break
            frontier = [p for p in producers if op[p] in FUSABLE_OPS]
            if not frontier:
                break
    return result
