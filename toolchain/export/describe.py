"""Read what an exported ONNX model says about itself: provenance, I/O, the node-to-module map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, one_line


def inspect_model(path: str | Path, resolve: list[str] | None = None, include_nodes: bool = False) -> dict[str, Any]:
    """Provenance (``toolchain.*`` metadata), inputs/outputs with symbolic dims, node and module counts,
    and the module each name in ``resolve`` maps to.

    A name to resolve is a node name as ONNX Runtime's profiler reports it, optionally followed by
    ``@OP`` (the profiled ``op_name``, e.g. ``relu_3_nchwc@Conv``). Names are resolved against the graph
    ONNX Runtime optimizes for the CPU execution provider at the highest level."""
    import onnx

    from toolchain.core.onnxfile import load_graph, read_provenance
    from toolchain.formats.nodemap import NodeModuleMap

    model = load_graph(path)  # first: a missing or truncated external data file is said in one line
    provenance = read_provenance(path)
    try:
        node_map = NodeModuleMap.from_model(model)
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolchainError(f"{path}: its node-to-module map is corrupt ({one_line(exc)})",
                             hint="export the model again") from None

    def io(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            if not v.type.HasField("tensor_type") or not v.type.tensor_type.elem_type:
                out.append({"name": v.name, "shape": None, "dtype": v.type.WhichOneof("value") or "unknown"})
                continue
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    initializers = {i.name for i in model.graph.initializer}
    info: dict[str, Any] = {
        "path": str(path), "provenance": provenance,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": io(i for i in model.graph.input if i.name not in initializers), "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "mapped_nodes": sum(1 for n in model.graph.node if node_map and node_map.module_of(n.name) is not None),
        "modules": len(node_map.modules) if node_map else 0,
        "has_node_map": node_map is not None,
    }
    if resolve:
        if node_map is None:
            raise ToolchainError(f"{path} has no node-to-module map: export it with `toolchain export`")
        graph = cpu_optimized_graph(path)
        info["resolved"] = []
        for spec in resolve:
            name, _, op = spec.rpartition("@") if "@" in spec else (spec, "", "")
            r = node_map.resolve(name, op or None, graph)
            info["resolved"].append({"name": name, "op": op or None, "module": r.module if r else None,
                                     "method": r.method if r else None})
    if include_nodes:
        info["node_modules"] = [{"name": n.name, "op": n.op_type, "module": node_map.module_of(n.name) if node_map else None}
                                for n in model.graph.node]
    return info


def cpu_optimized_graph(path: str | Path):
    """Let ONNX Runtime optimize the model for the CPU EP and index the graph it writes."""
    import tempfile

    import onnx

    from toolchain.formats.nodemap import OptimizedGraph
    from toolchain.runtime.session import create_session

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        create_session(path, ["cpu"], optimized_model_path=str(optimized))
        return OptimizedGraph.from_model(onnx.load(str(optimized), load_external_data=False))
