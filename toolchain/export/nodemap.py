"""Building the node-to-module map at export: each ONNX node's module from the exporter's scopes (dynamo
``metadata_props``, TorchScript node names), Conv+BatchNorm folding undone, fused activations traced to
their Conv/MatMul, and :func:`attach` to store it in the model. Reading and resolving the map is
:mod:`toolchain.formats.nodemap`."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from toolchain.core.onnxfile import set_metadata
from toolchain.formats.nodemap import COMPUTE_OPS, FUSABLE_OPS, MAP_KEY, ROOT, NodeModuleMap, scope_to_module

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    from torch import nn


def bn_producers(model: nn.Module, args: tuple) -> dict[str, str]:
    """For every BatchNorm module, the Conv/Linear module whose output it normalises (by running ``args``
    through ``model`` with forward hooks). Module names are as in ``model.named_modules()``."""
    import torch
    from torch import nn

    made_by: dict[int, str] = {}
    result: dict[str, str] = {}
    producers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, producers):
            handles.append(mod.register_forward_hook(
                lambda _m, _i, out, name=name: made_by.__setitem__(id(out), name)))
        elif isinstance(mod, norms):
            handles.append(mod.register_forward_hook(
                lambda _m, inp, _o, name=name: result.__setitem__(name, made_by[id(inp[0])])
                if id(inp[0]) in made_by else None))
    try:
        with torch.inference_mode():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return result


def build_node_map(model: onnx.ModelProto, wrapper: nn.Module, args: tuple, exporter: str,
                   strip_prefix: str = "model.") -> NodeModuleMap:
    """Map every node of the exported ``model`` to a module of ``wrapper`` (the module that was exported,
    whose wrapped model sits under ``strip_prefix``). ``args`` are the example inputs, used to find which
    Conv feeds each BatchNorm."""
    full_modules = {name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in wrapper.named_modules()}
    bn_to_conv = bn_producers(wrapper, args)

    def strip(name: str) -> str:
        inner = strip_prefix.rstrip(".")
        if name == inner or name == "":
            return ROOT
        return name[len(strip_prefix):] if name.startswith(strip_prefix) else name

    nodes: dict[str, tuple[str | None, str]] = {}
    for node in model.graph.node:
        full = _dynamo_scope(node, full_modules) if exporter == "dynamo" else None
        if full is None and node.name.startswith("/"):
            full = scope_to_module(node.name.strip("/").split("/")[:-1], full_modules, prefix="")
        if full is not None and node.op_type in COMPUTE_OPS and "BatchNorm" in full_modules.get(full, ""):
            full = bn_to_conv.get(full, full)
        nodes[node.name] = (strip(full) if full is not None else None, node.op_type)

    tensors: dict[str, str] = {}
    for node in model.graph.node:
        for t in node.output:
            tensors[t] = node.name
    for node in model.graph.node:
        for t in node.input:
            if t and t not in tensors:
                tensors[t] = node.name  # initializers and graph inputs: their first consumer

    _fill_unscoped(model, nodes, tensors)
    fused_from = _fused_sources(model, nodes, tensors)
    modules = {strip(n): c for n, c in full_modules.items() if n != ""}
    return NodeModuleMap(modules=modules, nodes=nodes, tensors=tensors, fused_from=fused_from, exporter=exporter,
                         prefix=strip_prefix)


def _dynamo_scope(node: onnx.NodeProto, modules: dict[str, str]) -> str | None:
    """The deepest module in a dynamo-exported node's ``pkg.torch.onnx.name_scopes``."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            known = [s for s in scopes if s in modules]
            return known[-1] if known else None
    return None


def _fill_unscoped(model: onnx.ModelProto, nodes: dict, tensors: dict) -> None:
    """Nodes the exporter left without a scope (constants, shape glue) take the module of the node that
    consumes their output, else of the node that produces their first input."""
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node.name)
    for _ in range(3):
        for node in model.graph.node:
            if nodes[node.name][0] is not None:
                continue
            candidates = [c for t in node.output for c in consumers.get(t, [])]
            candidates += [tensors[t] for t in node.input if t in tensors and tensors[t] != node.name]
            for other in candidates:
                if nodes[other][0] is not None:
                    nodes[node.name] = (nodes[other][0], node.op_type)
                    break


def _fused_sources(model: onnx.ModelProto, nodes: dict, tensors: dict) -> dict[str, str]:
    """For each node ORT may fuse into a Conv/MatMul (activations, bias/residual adds), the compute node
    upstream of it (at most three fusable hops), preferring the first input."""
    result: dict[str, str] = {}
    inputs = {n.name: [t for t in n.input if t] for n in model.graph.node}
    for node in model.graph.node:
        if node.op_type not in FUSABLE_OPS:
            continue
        frontier, hops = [node.name], 0
        while frontier and hops < 3 and node.name not in result:
            nxt = []
            for name in frontier:
                for t in inputs.get(name, []):
                    producer = tensors.get(t)
                    if producer is None or producer == name or producer not in nodes:
                        continue
                    if nodes[producer][1] in COMPUTE_OPS:
                        result[node.name] = producer
                        break
                    if nodes[producer][1] in FUSABLE_OPS:
                        nxt.append(producer)
                if node.name in result:
                    break
            frontier, hops = nxt, hops + 1
    return result


def attach(model: onnx.ModelProto, node_map: NodeModuleMap) -> None:
    """Store ``node_map`` in ``model.metadata_props`` (replacing an older one)."""
    set_metadata(model, {MAP_KEY: node_map.to_json()})
