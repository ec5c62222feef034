"""From a profiled run to a cost table: per-node work (MACs, parameters, bytes moved) from ONNX shape
inference, ORT's optimized nodes resolved to PyTorch modules through the node map, and the measured
energy split over modules by their share of the time (the ``time-share`` method, named in the table)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.formats.costs import UNMAPPED, LayerCost


@dataclass
class NodeStats:
    """Static cost of one ONNX node at the profiled shapes: multiply-accumulates, parameters (elements of
    the initializers it reads), and bytes moved (input, output and initializer tensors it touches)."""

    macs: int = 0
    params: int = 0
    bytes_moved: int = 0
    weights: tuple[str, ...] = ()


def _dims(value_info) -> list[int] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return None if any(d < 0 for d in dims) else dims


def with_input_shapes(model, feeds: dict[str, np.ndarray]):
    """A copy of ``model`` with its inputs fixed to the shapes of ``feeds`` and every tensor's shape
    inferred from them (onnx shape inference with data propagation)."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for inp in m.graph.input:
        if inp.name in feeds:
            shape = inp.type.tensor_type.shape
            for d, size in zip(shape.dim, feeds[inp.name].shape, strict=False):
                d.Clear()
                d.dim_value = int(size)
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = shape_inference.infer_shapes(m, data_prop=True)
    if _unknown_outputs(inferred):
        # onnx's inference loses the batch through the Shape/Gather/Expand chains of dynamo-exported
        # transformers (every MatMul unknown: MACs and bytes 0); ORT's symbolic inference follows them
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        del m.graph.value_info[:]
        try:
            symbolic = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
        except Exception:  # noqa: BLE001 - best effort: keep what onnx inferred
            return inferred
        if symbolic is not None and _unknown_outputs(symbolic) < _unknown_outputs(inferred):
            return symbolic
    return inferred


def _unknown_outputs(model) -> int:
    """How many node outputs of ``model`` lack a fully known shape."""
    known = {vi.name for vi in list(model.graph.value_info) + list(model.graph.output) if _dims(vi) is not None}
    return sum(1 for n in model.graph.node if n.op_type != "Constant" for o in n.output if o and o not in known)


def graph_stats(model, feeds: dict[str, np.ndarray]) -> dict[str, NodeStats]:
    """:class:`NodeStats` per node of ``model`` (an ``onnx.ModelProto``) at the shapes of ``feeds``."""
    import onnx

    try:
        m = with_input_shapes(model, feeds)
    except Exception:  # noqa: BLE001 - stats are best effort; unknown shapes count as 0
        m = model
    info: dict[str, tuple[list[int] | None, int]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        elem = vi.type.tensor_type.elem_type
        size = onnx.helper.tensor_dtype_to_np_dtype(elem).itemsize if elem else 4
        info[vi.name] = (_dims(vi), size)
    inits = {i.name: (list(i.dims), onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize)
             for i in m.graph.initializer}
    info.update(inits)
    for node in m.graph.node:  # Constant nodes hold weights too in some exports
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            t = node.attribute[0].t
            inits.setdefault(node.output[0], (list(t.dims), onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize))
            info.setdefault(node.output[0], inits[node.output[0]])

    def nbytes(name: str) -> int:
        dims, size = info.get(name, (None, 0))
        return int(np.prod(dims)) * size if dims is not None else 0

    def numel(name: str) -> int | None:
        dims = info.get(name, (None, 0))[0]
        return int(np.prod(dims)) if dims is not None else None

    stats: dict[str, NodeStats] = {}
    for node in m.graph.node:
        if node.op_type == "Constant":
            continue
        weights = tuple(i for i in node.input if i in inits)
        params = sum(int(np.prod(inits[w][0])) for w in weights)
        moved = sum(nbytes(i) for i in node.input if i) + sum(nbytes(o) for o in node.output if o)
        stats[node.name] = NodeStats(_macs(node, info, numel), params, moved, weights)
    return stats


def _macs(node, info, numel) -> int:
    """Multiply-accumulates of the compute nodes (Conv, MatMul, Gemm and their quantized forms)."""
    op = node.op_type
    out = numel(node.output[0]) if node.output else None
    if out is None:
        return 0
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
        w = node.input[3] if op == "QLinearConv" else node.input[1]
        wdims = info.get(w, (None, 0))[0]
        if not wdims or len(wdims) < 3:
            return 0
        per_out = int(np.prod(wdims[1:]))  # C_in / groups * kernel
        if op == "ConvTranspose":
            return int(np.prod(wdims)) * (numel(node.input[0]) or 0) // max(wdims[0], 1)
        return out * per_out
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul"):
        a = node.input[0]
        adims = info.get(a, (None, 0))[0]
        if not adims:
            return 0
        k = adims[-1]
        if op == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            k = adims[0]
        return out * k
    return 0


def attribute(model_path: str | Path, node_profile, feeds: dict[str, np.ndarray], joules: tuple[float, float],
              ) -> tuple[list[LayerCost], dict[str, Any]]:
    """Rows of the cost table from a profiled run, and a summary of the mapping (unmapped share, kernel
    counts). ``joules``: net energy per inference (mean, std) spread over the rows by time share."""
    import onnx

    from toolchain.formats.nodemap import NodeModuleMap, OptimizedGraph

    # graphs only: the weights are not needed (initializer dims are in the graph), and the optimized copy's
    # external data may not be where its references point
    model = onnx.load(str(model_path), load_external_data=False)
    node_map = NodeModuleMap.from_model(model)
    if node_map is None:
        raise ToolchainError(f"{model_path}: no node-to-module map in the model's metadata",
                             hint="export it with `toolchain export` (layers can only be named for models it exported)")
    graph = OptimizedGraph.from_model(onnx.load(str(node_profile.optimized_model), load_external_data=False))
    runs = max(node_profile.runs, 1)
    per_module_runs: dict[str, list[float]] = {}
    kernels: dict[str, int] = {}
    ops: dict[str, set[str]] = {}
    for n in node_profile.nodes:
        found = node_map.resolve(n.name, n.op_type, graph)
        module = found.module if found is not None else UNMAPPED
        per_run = list(n.per_run_us) if len(n.per_run_us) == runs else [n.total_us / runs] * runs
        acc = per_module_runs.setdefault(module, [0.0] * runs)
        for i, us in enumerate(per_run):
            acc[i] += us
        kernels[module] = kernels.get(module, 0) + 1
        ops.setdefault(module, set()).add(n.op_type)
    stats = graph_stats(model, feeds)
    static: dict[str, NodeStats] = {}
    nodes_of: dict[str, list[str]] = {}
    seen_weights: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        found = node_map.resolve(node.name, node.op_type)
        module = found.module if found is not None else UNMAPPED
        nodes_of.setdefault(module, []).append(node.name)
        s, agg = stats.get(node.name, NodeStats()), static.setdefault(module, NodeStats())
        seen = seen_weights.setdefault(module, set())
        fresh = [w for w in s.weights if w not in seen]
        seen.update(fresh)
        share = s.params if len(fresh) == len(s.weights) else 0
        agg.macs += s.macs
        agg.params += share
        agg.bytes_moved += s.bytes_moved
    total_us = sum(statistics.fmean(v) for v in per_module_runs.values()) or 1.0
    rows = []
    for module, per_run in per_module_runs.items():
        mean_us = statistics.fmean(per_run)
        share = mean_us / total_us
        s = static.get(module, NodeStats())
        rows.append(LayerCost(
            module=module, module_type=node_map.modules.get(module, "") if module != UNMAPPED else "",
            onnx_nodes=nodes_of.get(module, []), kernels=kernels[module], op_types=sorted(ops[module]),
            latency_ms_mean=mean_us / 1000, latency_ms_std=(statistics.stdev(per_run) / 1000 if runs > 1 else 0.0),
            share=share, energy_j_mean=joules[0] * share, energy_j_std=joules[1] * share,
            macs=s.macs, params=s.params, bytes_moved=s.bytes_moved))
    rows.sort(key=lambda r: r.share, reverse=True)
    unmapped = next((r.share for r in rows if r.module == UNMAPPED), 0.0)
    summary = {"kernels": len(node_profile.nodes), "modules": len(rows), "unmapped_share": unmapped,
               "modules_without_kernels": sorted(m for m in nodes_of if m not in per_module_runs and m != UNMAPPED)}
    return rows, summary
