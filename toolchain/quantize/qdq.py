"""QDQ compaction: the second step of the quantize flow, run on every model :mod:`toolchain.quantize.static`
writes. :func:`compact_qdq` removes, in place, the bytes an ORT-quantized model carries that change nothing
ORT runs.

What ORT's QDQ quantizer writes beyond the int8 weights, and what compact_qdq does about it (MobileNetV2,
17.9k output channels for 3.5M weights, most of them in depthwise convolutions with 9 weights a channel):
per output channel a float32 weight scale and an int8 weight zero point, and for the bias an int32 copy, a
float32 scale (input scale x weight scale) and an all-zero int32 zero point: 17 bytes a channel where the
float32 bias took 4. ORT quantizes a float32 Conv/Gemm bias itself when it loads a QDQ model
(WeightBiasQuantization, onnxruntime >= 1.21: round(bias / (input scale x weight scale)), zero point 0), so
a float32 bias gives the same fused QLinearConv/QGemm and int32 bias, at 4 bytes a channel.
"""

from __future__ import annotations

import numpy as np

_FLOAT_BIAS_OPS = ("Conv", "Gemm")  # those ORT's WeightBiasQuantization handles (ConvTranspose only lately)


def ort_quantizes_float_bias(version: str) -> bool:
    """Whether onnxruntime ``version`` (e.g. ``"1.21.0"``) quantizes float Conv/Gemm biases of QDQ models
    at load time."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (1, 21)


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _is_scalar(tensor) -> bool:
    return len(tensor.dims) == 0 or (len(tensor.dims) == 1 and tensor.dims[0] == 1)


def _inline(tensor) -> bool:
    import onnx

    return tensor.data_location != onnx.TensorProto.EXTERNAL


def _float_bias(node, producer: dict, consumers: dict, inits: dict, outputs: set[str], reference: dict):
    """The FP32 bias of Conv/Gemm ``node`` when its int32 DequantizeLinear can give way to it with ORT's
    fused graph unchanged (the conditions of ORT's WeightBiasQuantization), else None."""
    import onnx
    from onnx import numpy_helper

    if node.op_type not in _FLOAT_BIAS_OPS or len(node.input) < 3 or not node.input[2] or len(node.output) != 1:
        return None
    if node.op_type == "Gemm" and (_attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0):
        return None
    dq_x, dq_w, dq_b = (producer.get(node.input[i]) for i in range(3))
    if any(d is None or d.op_type != "DequantizeLinear" or len(d.input) < 2 for d in (dq_x, dq_w, dq_b)):
        return None
    if dq_x.input[1] not in inits or not _is_scalar(inits[dq_x.input[1]]):
        return None  # ORT requires a per-tensor input scale
    q = inits.get(dq_b.input[0])
    scale = inits.get(dq_b.input[1])
    if (q is None or scale is None or q.data_type != onnx.TensorProto.INT32 or len(q.dims) != 1
            or not (_inline(q) and _inline(scale)) or len(consumers.get(node.input[2], [])) != 1
            or node.input[2] in outputs):
        return None
    w_scale = inits.get(dq_w.input[1])
    if w_scale is None:
        return None
    if not _is_scalar(w_scale):
        expected_axis = 0 if node.op_type == "Conv" or _attr(node, "transB", 0) else 1
        if (len(w_scale.dims) != 1 or w_scale.dims[0] != q.dims[0] or _attr(dq_w, "axis", 1) != expected_axis
                or _attr(dq_w, "block_size", 0)):
            return None
    current = node  # ORT quantizes the bias only where the output reaches a QuantizeLinear, through Relu/Clip
    while True:
        if len(current.output) != 1 or current.output[0] in outputs:
            return None
        users = consumers.get(current.output[0], [])
        if len(users) != 1:
            return None
        if users[0].op_type == "QuantizeLinear":
            break
        if users[0].op_type not in ("Relu", "Clip"):
            return None
        current = users[0]
    original = reference.get(node.input[2])  # ORT names the bias DequantizeLinear's output as the FP32 bias
    if original is None or original.data_type != onnx.TensorProto.FLOAT or not _inline(original):
        return None
    bias = numpy_helper.to_array(original)
    quantized = numpy_helper.to_array(q).astype(np.float64)
    step = numpy_helper.to_array(scale).astype(np.float64)
    if (bias.shape != quantized.shape or not np.all(np.isfinite(step) & (step > 0))
            or np.any(np.abs(bias / step - quantized) > 0.5 + 1e-3)):
        return None  # the int32 bias is not round(bias / scale) (clipped, or another bias): keep it
    return numpy_helper.from_array(bias, node.input[2])


def _subgraph_names(graph) -> set[str]:
    """Every tensor name a node's subgraph (If/Loop/Scan bodies) mentions: left alone by the compaction."""
    import onnx

    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
            for sub in subs:
                names |= {t for n in sub.node for t in (*n.input, *n.output)} | {t.name for t in sub.initializer}
                names |= _subgraph_names(sub)
    return names


def compact_qdq(model, reference=None) -> dict[str, int]:
    """Remove, in place, the bytes an ORT-quantized ``model`` (an ``onnx.ModelProto``) carries that change
    nothing ORT runs:

    - with ``reference`` (the FP32 graph that was quantized; pass it only for onnxruntime >= 1.21), int32
      Conv/Gemm biases and their DequantizeLinear (int32 data, float32 scale, int32 zero point) give way to
      the FP32 bias, which ORT quantizes to the same int32 values when it loads the model;
    - all-zero zero points of DequantizeLinear nodes on int32 initializers (optional, 0 is the default);
    - duplicate scalar and 1-D initializers (shared zero points and scales, equal biases): one copy kept;
    - initializers nothing uses any more, and ``value_info`` of tensors the graph no longer has.

    Node and tensor names stay as ORT made them (the node-to-module map resolves profiled names by them).
    Returns how many of each were removed."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    graph = model.graph
    stats = {"float_biases": 0, "zero_points_dropped": 0, "initializers_deduplicated": 0,
             "initializers_removed": 0, "value_info_removed": 0}
    protected = _subgraph_names(graph) | {i.name for i in graph.input} | {o.name for o in graph.output}
    outputs = {o.name for o in graph.output}
    inits = {t.name: t for t in graph.initializer}

    if reference is not None:
        ref_inits = {t.name: t for t in reference.graph.initializer}
        producer = {t: n for n in graph.node for t in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for t in n.input:
                consumers.setdefault(t, []).append(n)
        replaced = []
        for node in graph.node:
            if node.input[2:3] and node.input[2] in protected:
                continue
            bias = _float_bias(node, producer, consumers, inits, outputs, ref_inits)
            if bias is not None:
                replaced.append((producer[node.input[2]], bias))
        for dq, bias in replaced:
            graph.node.remove(dq)
            graph.initializer.append(bias)
            inits[bias.name] = bias
        stats["float_biases"] = len(replaced)

    for node in graph.node:
        if (node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[2] not in protected
                and node.input[0] in inits and node.input[2] in inits):
            data, zero = inits[node.input[0]], inits[node.input[2]]
            if (data.data_type == zero.data_type == onnx.TensorProto.INT32 and _inline(zero)
                    and not numpy_helper.to_array(zero).any()):
                del node.input[2]
                stats["zero_points_dropped"] += 1

    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for t in graph.initializer:
        if len(t.dims) > 1 or t.name in protected or not _inline(t):
            continue
        key = (t.data_type, tuple(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest())
        if key in first:
            rename[t.name] = first[key]
        else:
            first[key] = t.name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    stats["initializers_deduplicated"] = len(rename)

    used = {t for n in graph.node for t in n.input} | protected
    kept = [t for t in graph.initializer if t.name in used]
    stats["initializers_removed"] = len(graph.initializer) - len(kept)
    if stats["initializers_removed"]:
        del graph.initializer[:]
        graph.initializer.extend(kept)

    present = {t for n in graph.node for t in (*n.input, *n.output)} | protected
    info = [v for v in graph.value_info if v.name in present]
    stats["value_info_removed"] = len(graph.value_info) - len(info)
    if stats["value_info_removed"]:
        del graph.value_info[:]
        graph.value_info.extend(info)
    return stats

