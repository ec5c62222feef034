"""Keeping excluded nodes of a static QDQ model really in FP32.

ONNX Runtime (>= 1.21, WeightBiasQuantization) quantizes at load time the float weights of a
Conv/ConvTranspose/Gemm whose input comes from a DequantizeLinear and whose output reaches a
QuantizeLinear, so a node ``nodes_to_exclude`` left in FP32 between two quantized neighbours ran INT8
after all. :func:`hold_in_fp32` rewrites such nodes' input so that no QDQ fusion matches them;
:func:`toolchain.quantize.static.quantize_model` applies it to every excluded node it writes.
"""

from __future__ import annotations

from pathlib import Path


def hold_in_fp32(path: str | Path, nodes: list[str]) -> list[str]:
    """Make the excluded ``nodes`` of the QDQ model at ``path`` run in FP32, in place; returns those changed.

    ONNX Runtime (>= 1.21, WeightBiasQuantization) quantizes at load time the float weights of a
    Conv/ConvTranspose/Gemm whose input comes from a DequantizeLinear and whose output reaches a
    QuantizeLinear: per tensor, symmetric int8. A node ``nodes_to_exclude`` kept in FP32 between two
    quantized neighbours is such a node, so it ran INT8 with coarser weights than before. Its input is
    dequantized with plain arithmetic instead (Cast, Sub zero point, Mul scale: the same values), which
    no QDQ fusion matches."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    scalars = {t.name for t in graph.initializer if len(t.dims) == 0 or list(t.dims) == [1]}
    wanted = set(nodes)
    changed, ordered = [], []
    for node in graph.node:
        dq = producer.get(node.input[0]) if node.input else None
        if (node.name in wanted and node.op_type in ("Conv", "ConvTranspose", "Gemm") and dq is not None
                and dq.op_type == "DequantizeLinear" and dq.input[1] in scalars and len(node.input) > 1
                and node.input[1] not in producer):
            base = f"{node.name}_fp32_input"
            ordered.append(helper.make_node("Cast", [dq.input[0]], [base + "_cast"], base + "_cast", to=TensorProto.FLOAT))
            value = base + "_cast"
            if len(dq.input) > 2 and dq.input[2]:
                ordered += [helper.make_node("Cast", [dq.input[2]], [base + "_zp"], base + "_zp", to=TensorProto.FLOAT),
                            helper.make_node("Sub", [value, base + "_zp"], [base + "_sub"], base + "_sub")]
                value = base + "_sub"
            ordered.append(helper.make_node("Mul", [value, dq.input[1]], [base], base + "_mul"))
            node.input[0] = base
            changed.append(node.name)
        ordered.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(ordered)
        onnx.save(model, str(path))
    return changed
