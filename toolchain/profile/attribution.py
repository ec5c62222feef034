"""From a profiled run to a cost table: per-node work (MACs, parameters, bytes moved) from ONNX shape
inference, ORT's optimized nodes resolved to PyTorch modules through the node map (or, for a model
without one, to its ONNX nodes: :mod:`toolchain.profile.nodes`), subgraphs a provider compiled into one
kernel kept as one row each (:mod:`toolchain.profile.fused`), and the measured energy split over the rows
by their share of the time (the ``time-share`` method, named in the table)."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.formats.costs import MODULE, ONNX_NODE, UNMAPPED, LayerCost
from toolchain.formats.nodemap import COMPUTE_OPS
from toolchain.profile.fused import context_subgraphs, covered_nodes, fused_by
from toolchain.profile.nodes import node_map as build_node_map
from toolchain.profile.nodes import node_names


@dataclass
class NodeStats:
    """Static cost of one ONNX node at the profiled shapes: multiply-accumulates, parameters (elements of
    the initializers it reads), bytes moved (input, output and initializer tensors it touches), and its
    input and output shapes (None: not inferred)."""

    macs: int = 0
    params: int = 0
    bytes_moved: int = 0
    weights: tuple[str, ...] = ()
    input_shapes: tuple[list[int] | None, ...] = ()
    output_shapes: tuple[list[int] | None, ...] = ()


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
    """:class:`NodeStats` per node of ``model`` (an ``onnx.ModelProto``) at the shapes of ``feeds``, by node
    name (:func:`toolchain.profile.nodes.node_names`: unnamed nodes as ORT's profiler names them)."""
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
    for name, node in zip(node_names(m), m.graph.node, strict=True):
        if node.op_type == "Constant":
            continue
        weights = tuple(i for i in node.input if i in inits)
        params = sum(int(np.prod(inits[w][0])) for w in weights)
        moved = sum(nbytes(i) for i in node.input if i) + sum(nbytes(o) for o in node.output if o)
        stats[name] = NodeStats(_macs(node, info, numel), params, moved, weights,
                                tuple(info.get(i, (None, 0))[0] for i in node.input if i),
                                tuple(info.get(o, (None, 0))[0] for o in node.output if o))
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
    """Rows of the cost table from a profiled run, and a summary (granularity, unmapped and fused shares,
    kernel counts). ``joules``: net energy per inference (mean, std) spread over the rows by time share.

    With the export's node-to-module map a row is a module; without, a row is an ONNX node of the file
    (``summary["granularity"]`` says which), and nodes ORT fused into a neighbour's kernel (an activation
    into its Conv) are listed in that neighbour's row. A kernel a provider compiled from a subgraph is a
    row of its own, covering the ONNX nodes the EP context model shows (or saying they are not known)."""
    import onnx

    from toolchain.formats.nodemap import NodeModuleMap, OptimizedGraph

    # graphs only: the weights are not needed (initializer dims are in the graph), and the optimized copy's
    # external data may not be where its references point
    model = onnx.load(str(model_path), load_external_data=False)
    exported_map = NodeModuleMap.from_model(model)
    granularity = MODULE if exported_map is not None else ONNX_NODE
    node_map = exported_map or build_node_map(model)
    names = node_names(model)
    op_of = dict(zip(names, (n.op_type for n in model.graph.node), strict=True))
    written = node_profile.optimized_model or node_profile.context_model
    graph = (OptimizedGraph.from_model(onnx.load(str(written), load_external_data=False))
             if written is not None and Path(written).is_file() else None)
    context = context_subgraphs(onnx.load(str(node_profile.context_model), load_external_data=False)
                                if node_profile.context_model and Path(node_profile.context_model).is_file() else None)
    runs = max(node_profile.runs, 1)
    per_row_runs: dict[str, list[float]] = {}
    kernels: dict[str, int] = {}
    ops: dict[str, set[str]] = {}
    fused: dict[str, tuple[str, Any, list[str] | None]] = {}  # row -> (provider, kernel, covered nodes)
    labels = _fused_labels(node_profile.nodes, context)
    for n in node_profile.nodes:
        ep = fused_by(n.name, n.op_type, n.provider, context)
        if ep is not None:
            key = labels[n.name]
            sub = context.get(n.name)
            fused[key] = (ep, n, covered_nodes(model, names, sub) if sub is not None else None)
        else:
            found = node_map.resolve(n.name, n.op_type, graph)
            key = found.module if found is not None else UNMAPPED
            if granularity == ONNX_NODE and n.op_type in COMPUTE_OPS and op_of.get(key) not in COMPUTE_OPS \
                    and key in node_map.fused_from:  # a Conv kernel named after the activation fused into it
                key = node_map.fused_from[key]
        per_run = list(n.per_run_us) if len(n.per_run_us) == runs else [n.total_us / runs] * runs
        acc = per_row_runs.setdefault(key, [0.0] * runs)
        for i, us in enumerate(per_run):
            acc[i] += us
        kernels[key] = kernels.get(key, 0) + 1
        ops.setdefault(key, set()).add(n.op_type)
    in_fused = {node: key for key, (_, _, covered) in fused.items() for node in covered or ()}
    stats = graph_stats(model, feeds)
    static: dict[str, NodeStats] = {}
    nodes_of: dict[str, list[str]] = {}
    seen_weights: dict[str, set[str]] = {}
    fused_modules: dict[str, set[str]] = {}
    for name, node in zip(names, model.graph.node, strict=True):
        if node.op_type == "Constant":
            continue
        key = in_fused.get(name)
        if granularity == MODULE:
            found = node_map.resolve(node.name, node.op_type)
            module = found.module if found is not None else UNMAPPED
            if key is not None and module != UNMAPPED:
                fused_modules.setdefault(key, set()).add(module)
            key = key or module
        elif key is None:
            absorbed = node_map.fused_from.get(name)
            key = absorbed if name not in per_row_runs and absorbed in per_row_runs else name
        nodes_of.setdefault(key, []).append(name)
        s, agg = stats.get(name, NodeStats()), static.setdefault(key, NodeStats())
        seen = seen_weights.setdefault(key, set())
        fresh = [w for w in s.weights if w not in seen]
        seen.update(fresh)
        agg.macs += s.macs
        agg.params += s.params if len(fresh) == len(s.weights) else 0
        agg.bytes_moved += s.bytes_moved
    total_us = sum(statistics.fmean(v) for v in per_row_runs.values()) or 1.0
    rows = []
    for key, per_run in per_row_runs.items():
        mean_us = statistics.fmean(per_run)
        share = mean_us / total_us
        s = static.get(key, NodeStats())
        row = LayerCost(
            module=key, module_type=_row_type(key, granularity, node_map, op_of), onnx_nodes=nodes_of.get(key, []),
            kernels=kernels[key], op_types=sorted(ops[key]), latency_ms_mean=mean_us / 1000,
            latency_ms_std=(statistics.stdev(per_run) / 1000 if runs > 1 else 0.0), share=share,
            energy_j_mean=joules[0] * share, energy_j_std=joules[1] * share, macs=s.macs, params=s.params,
            bytes_moved=s.bytes_moved)
        if key in fused:
            _fused_row(row, *fused[key], op_of, fused_modules.get(key))
        elif granularity == ONNX_NODE and key in stats:
            row.input_shapes, row.output_shapes = list(stats[key].input_shapes), list(stats[key].output_shapes)
        rows.append(row)
    rows.sort(key=lambda r: r.share, reverse=True)
    unmapped = next((r.share for r in rows if r.module == UNMAPPED), 0.0)
    fused_rows = [r for r in rows if r.fused_by]
    without = sorted(m for m in nodes_of if m not in per_row_runs and m != UNMAPPED)
    summary = {"granularity": granularity, "kernels": len(node_profile.nodes), "modules": len(rows),
               "unmapped_share": unmapped, "fused_share": sum((r.share for r in fused_rows), 0.0),
               "fused": [{"row": r.module, "provider": r.fused_by, "share": r.share,
                          "onnx_nodes": len(r.onnx_nodes) if fused[r.module][2] is not None else None}
                         for r in fused_rows],
               "modules_without_kernels" if granularity == MODULE else "nodes_without_kernels": without}
    return rows, summary


def _row_type(key: str, granularity: str, node_map, op_of: dict[str, str]) -> str:
    if key == UNMAPPED:
        return ""
    return op_of.get(key, "") if granularity == ONNX_NODE else node_map.modules.get(key, "")


def _fused_labels(kernels, context) -> dict[str, str]:
    """Stable row names for the compiled subgraphs: ``<provider> subgraph <k>``, k counting them in the
    order of the providers' own numbering (which goes on across the sessions of a process)."""
    found = [(short, n.name) for n in kernels if (short := fused_by(n.name, n.op_type, n.provider, context))]

    def order(item):
        digits = re.findall(r"\d+", item[1])
        return (item[0], [int(d) for d in digits], item[1])

    labels, count = {}, {}
    for short, name in sorted(found, key=order):
        count[short] = count.get(short, 0) + 1
        labels[name] = f"{short} subgraph {count[short]}"
    return labels


def _fused_row(row: LayerCost, provider: str, kernel, covered: list[str] | None, op_of: dict[str, str],
               modules: set[str] | None) -> None:
    """Fill in a compiled subgraph's row: who fused it, what it covers (or that it is not known), shapes."""
    row.fused_by, row.module_type = provider, f"fused by {provider}"
    where = f"profiled as {kernel.name}"
    row.input_shapes = [list(d) if d is not None else None for d in kernel.input_shapes]
    row.output_shapes = [list(d) if d is not None else None for d in kernel.output_shapes]
    if covered is None:
        row.note = (f"one kernel {provider} compiled from a subgraph ({where}); which ONNX nodes it covers is not "
                    "known (no EP context model matched it); its time is not split per layer")
        return
    counts: dict[str, int] = {}
    for name in covered:
        counts[op_of.get(name, "?")] = counts.get(op_of.get(name, "?"), 0) + 1
    row.op_types = sorted(counts)
    mix = ", ".join(f"{op} x{k}" for op, k in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    of = f" of {len(modules)} modules" if modules else ""
    row.note = (f"one kernel {provider} compiled from {len(covered)} ONNX nodes{of} ({mix}; from the EP context "
                f"model; {where}); its time is not split per layer")
