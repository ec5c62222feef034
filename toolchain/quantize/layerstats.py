"""Per-layer statistics of a QDQ model against its FP32 graph, for the post-quantization remedies.

:func:`quant_layers` finds the quantized Conv/Gemm nodes of a QDQ model (int8 weight initializer, its
scale, the bias) and the node of the same name in the FP32 graph that was quantized. :func:`layer_stats`
runs both models on calibration samples and gathers, per layer and weight group (a depthwise convolution
has one group a channel), statistics of the layer's input patches (the rows of im2col, ``K`` values per
output value): their mean over every output position and the second moments ``E[x_q x_q^T]`` and
``E[x_q x_f^T]`` over a sample of positions, where ``x_q`` is the QDQ model's (dequantized) input and
``x_f`` the FP32 model's. These suffice for the expected output error of any weights ``w~`` of output
channel ``o`` (``E[(w~ x_q - w x_f)^2]``, :func:`output_error`) and for its mean, so bias correction
(:mod:`toolchain.quantize.biascorrect`) and learned rounding (:mod:`toolchain.quantize.adaround`) need
no further passes over the data. The QDQ model runs without graph optimizations (DequantizeLinear, float
Conv, QuantizeLinear): exact integer arithmetic, not a CPU's saturating int8 kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolchain.data.dataset import Dataset

LAYER_OPS = ("Conv", "Gemm")


@dataclass
class QuantLayer:
    """One quantized Conv/Gemm: its ``node`` name, the int8 ``weight`` initializer and its ``scale``
    (per output channel or one), ``bias`` (float initializer name, or the int32 one when ``bias_int``),
    the input tensor names in the QDQ model (``q_input``, a DequantizeLinear output) and the FP32 graph
    (``fp_input``), and the convolution attributes (``group``, ``kernel``, ``strides``, ``pads``,
    ``dilations``; ``trans_b`` for Gemm)."""

    node: str
    op: str
    weight: str
    scale: str
    bias: str | None
    bias_int: bool
    q_input: str
    fp_input: str
    group: int = 1
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    trans_b: bool = False


@dataclass
class LayerStats:
    """Input statistics of one layer, per weight group ``g`` (arrays with a leading group axis, ``K``
    inputs a group): ``mean_q``/``mean_f`` (g, K) over all output positions, ``gram_qq``, ``gram_qf``
    and ``gram_ff`` (g, K, K) over ``rows`` sampled positions (divided by ``rows``)."""

    mean_q: np.ndarray
    mean_f: np.ndarray
    gram_qq: np.ndarray
    gram_qf: np.ndarray
    gram_ff: np.ndarray
    rows: int = 0
    positions: int = 0
    extra: dict = field(default_factory=dict)


def attribute(node, name: str, default):
    """The value of attribute ``name`` of ONNX ``node``, else ``default``."""
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def quant_layers(fp32, qdq) -> list[QuantLayer]:
    """The Conv/Gemm nodes of ``qdq`` (ModelProto) whose weight is a DequantizeLinear of an int8
    initializer and whose name names a node of ``fp32`` (the graph ``qdq`` was quantized from)."""
    inits = {t.name: t for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    fp_nodes = {n.name: n for n in fp32.graph.node}
    layers = []
    for n in qdq.graph.node:
        if n.op_type not in LAYER_OPS or n.name not in fp_nodes or len(n.input) < 2:
            continue
        dq_w, dq_x = producer.get(n.input[1]), producer.get(n.input[0])
        if dq_w is None or dq_w.op_type != "DequantizeLinear" or dq_w.input[0] not in inits:
            continue
        if dq_x is None or dq_x.op_type != "DequantizeLinear" or inits[dq_w.input[0]].data_type != 3:  # int8
            continue
        if n.op_type == "Gemm" and (attribute(n, "transA", 0) or attribute(n, "alpha", 1.0) != 1.0):
            continue
        bias, bias_int = (n.input[2] if len(n.input) > 2 and n.input[2] else None), False
        if bias and bias not in inits:
            dq_b = producer.get(bias)
            if dq_b is None or dq_b.op_type != "DequantizeLinear" or dq_b.input[0] not in inits:
                continue
            bias, bias_int = dq_b.input[0], True
        dims = list(inits[dq_w.input[0]].dims)
        kernel = tuple(dims[2:])
        layers.append(QuantLayer(
            node=n.name, op=n.op_type, weight=dq_w.input[0], scale=dq_w.input[1], bias=bias, bias_int=bias_int,
            q_input=n.input[0], fp_input=fp_nodes[n.name].input[0], group=int(attribute(n, "group", 1)),
            kernel=kernel, strides=tuple(attribute(n, "strides", [1] * len(kernel))),
            pads=tuple(attribute(n, "pads", [0] * 2 * len(kernel))),
            dilations=tuple(attribute(n, "dilations", [1] * len(kernel))),
            trans_b=bool(attribute(n, "transB", 0))))
    return layers


def weight_matrix(layer: QuantLayer, w: np.ndarray) -> np.ndarray:
    """Weights as (groups, outputs a group, K): the K inputs of one output value, in im2col order."""
    if layer.op == "Gemm":
        w2 = w if layer.trans_b else w.T
        return w2.reshape(1, w2.shape[0], -1)
    return w.reshape(layer.group, w.shape[0] // layer.group, -1)


def from_weight_matrix(layer: QuantLayer, wm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`weight_matrix`: back to the initializer's ``shape``."""
    if layer.op == "Gemm":
        w2 = wm.reshape(wm.shape[1], -1)
        return w2 if layer.trans_b else w2.T
    return wm.reshape(shape)


def _geometry(layer: QuantLayer, shape: tuple[int, ...]) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    return ((shape[2] + top + bottom - dh * (kh - 1) - 1) // sh + 1,
            (shape[3] + left + right - dw * (kw - 1) - 1) // sw + 1)


def _padded(layer: QuantLayer, x: np.ndarray) -> np.ndarray:
    if len(layer.kernel) != 2:
        raise ValueError(f"{layer.node}: only 2-D convolutions are supported")
    top, left, bottom, right = layer.pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def positions(layer: QuantLayer, x: np.ndarray) -> int:
    """How many output values a channel of ``layer`` computes from input ``x`` (N, C, H, W): N * Ho * Wo."""
    if layer.op == "Gemm":
        return len(x)
    ho, wo = _geometry(layer, x.shape)
    return len(x) * ho * wo


def patch_rows(layer: QuantLayer, x: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """The im2col rows of input ``x`` (N, C, H, W) for ``layer`` at the flat output positions ``index``
    (into N * Ho * Wo; None: all), grouped: (groups, rows, K), K ordered like the flattened weights
    (input channel, kernel row, kernel column). Gemm: (1, N, K)."""
    if layer.op == "Gemm":
        rows = x.reshape(1, len(x), -1).astype(np.float32)
        return rows if index is None else rows[:, index]
    ho, wo = _geometry(layer, x.shape)
    index = np.arange(len(x) * ho * wo) if index is None else index
    n, rem = np.divmod(index, ho * wo)
    oy, ox = np.divmod(rem, wo)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    top, left, bottom, right = layer.pads
    xp = np.pad(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), ((0, 0), (top, bottom), (left, right), (0, 0)))
    ys = (oy * sh)[:, None, None] + (np.arange(kh) * dh)[None, :, None]
    xs = (ox * sw)[:, None, None] + (np.arange(kw) * dw)[None, None, :]
    cols = xp[n[:, None, None], ys, xs]  # (rows, kh, kw, C)
    cols = cols.reshape(len(index), kh * kw, layer.group, -1).transpose(2, 0, 3, 1)  # (g, rows, Cg, taps)
    return np.ascontiguousarray(cols, dtype=np.float32).reshape(layer.group, len(index), -1)


def patch_sum(layer: QuantLayer, x: np.ndarray) -> np.ndarray:
    """The sum of all im2col rows of ``x`` for ``layer``, (groups, K), without forming them."""
    if layer.op == "Gemm":
        return x.reshape(len(x), 1, -1).sum(0, dtype=np.float64)
    ho, wo = _geometry(layer, x.shape)
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    xp = _padded(layer, x)
    out = np.empty((x.shape[1], kh * kw))
    for i in range(kh):
        for j in range(kw):
            view = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            out[:, i * kw + j] = view.sum(axis=(0, 2, 3), dtype=np.float64)
    return out.reshape(layer.group, -1)


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum over rows of a^T b per group: (g, rows, K) x (g, rows, K) -> (g, K, K), in float64."""
    return np.matmul(a.transpose(0, 2, 1), b).astype(np.float64)


def _with_outputs(model, names: list[str]) -> bytes:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            have.add(name)
    return m.SerializeToString()


def session(model_bytes: bytes, *, optimize: bool, threads: int = 1):
    """A CPU InferenceSession on serialized ``model_bytes`` (``optimize``: all graph optimizations, else
    none), ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def layer_stats(fp32, qdq, calibration: Dataset, layers: list[QuantLayer], *, batch: int = 8,
                rows_per_batch: int = 1024, seed: int = 0, threads: int = 1) -> dict[str, LayerStats]:
    """:class:`LayerStats` of every layer in ``layers`` (by node name) over all of ``calibration``:
    both models run ``batch`` samples at a time; second moments use ``rows_per_batch`` positions drawn
    at random (the same for the QDQ and FP32 inputs) from each batch."""
    rng = np.random.default_rng(seed)
    s_f = session(_with_outputs(fp32, [ly.fp_input for ly in layers]), optimize=False, threads=threads)
    s_q = session(_with_outputs(qdq, [ly.q_input for ly in layers]), optimize=False, threads=threads)
    names_f = [o.name for o in s_f.get_outputs()]
    names_q = [o.name for o in s_q.get_outputs()]
    acc: dict[str, dict] = {}
    for feeds in calibration.batches(batch):
        out_f = {**feeds, **dict(zip(names_f, s_f.run(None, feeds), strict=True))}
        out_q = {**feeds, **dict(zip(names_q, s_q.run(None, feeds), strict=True))}
        for ly in layers:
            xf, xq = out_f[ly.fp_input], out_q[ly.q_input]
            total = positions(ly, xq)
            index = None if total <= rows_per_batch else np.sort(rng.choice(total, rows_per_batch, replace=False))
            sq, sf = patch_rows(ly, xq, index), patch_rows(ly, xf, index)
            a = acc.setdefault(ly.node, {"sum_q": 0.0, "sum_f": 0.0, "qq": 0.0, "qf": 0.0, "ff": 0.0, "rows": 0,
                                         "positions": 0})
            a["sum_q"] = a["sum_q"] + patch_sum(ly, xq)
            a["sum_f"] = a["sum_f"] + patch_sum(ly, xf)
            a["qq"] = a["qq"] + _gram(sq, sq)
            a["qf"] = a["qf"] + _gram(sq, sf)
            a["ff"] = a["ff"] + _gram(sf, sf)
            a["rows"] += sq.shape[1]
            a["positions"] += total
    return {node: LayerStats(mean_q=a["sum_q"] / a["positions"], mean_f=a["sum_f"] / a["positions"],
                             gram_qq=a["qq"] / a["rows"], gram_qf=a["qf"] / a["rows"],
                             gram_ff=a["ff"] / a["rows"], rows=a["rows"],
                             positions=a["positions"])
            for node, a in acc.items()}


def output_error(stats: LayerStats, w_fp: np.ndarray, w_new: np.ndarray) -> np.ndarray:
    """Expected squared output error ``E[(w_new x_q - w_fp x_f)^2]`` (bias aside) per output channel,
    (groups, outputs a group), over the sampled positions. Weights as :func:`weight_matrix` gives them
    (float; dequantized for ``w_new``)."""
    quad = np.einsum("gok,gok->go", np.matmul(w_new, stats.gram_qq), w_new)
    cross = np.einsum("gok,gok->go", np.matmul(w_new, stats.gram_qf), w_fp)
    const = np.einsum("gok,gok->go", np.matmul(w_fp, stats.gram_ff), w_fp)
    return quad - 2 * cross + const


def initializers(model) -> dict:
    """``{name: TensorProto}`` of the model's initializers."""
    return {t.name: t for t in model.graph.initializer}
