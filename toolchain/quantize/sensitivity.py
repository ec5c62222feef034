"""Which nodes' quantization costs the output its accuracy, and what keeping them in FP32 would cost in time.

Every quantization the INT8 model applies is a :class:`Point`: an activation tensor through
QuantizeLinear/DequantizeLinear with the QDQ model's own scale and zero point (static), a weight replaced
by its dequantized values, or an input through DynamicQuantizeLinear (dynamic). Each point has *owners*:
the quantized nodes whose exclusion (all of them) takes it away, as ONNX Runtime's quantizer does: a
tensor between two quantized convolutions stays quantized until both are kept in FP32.

:func:`simulate` applies the points the quantized nodes outside a set still own to the FP32 graph: the
INT8 model "quantized with those nodes excluded", without calibrating again (the scales do not depend on
what is excluded). :func:`rank_fallbacks` measures, on a probe set, how much of the INT8 model's output
error each *unit* (one node, or the nodes sharing one quantized tensor) takes away when kept in FP32,
and divides it by the unit's share of the multiply-accumulates (its estimated cost in time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolchain.data.dataset import Dataset
from toolchain.runtime.outputs import Fidelity, fidelity, is_classifier, pooled

TRANSITION_SHARE = 0.005  # floor of a fallback's cost share: the (de)quantization it adds around itself
SHARED_MIN = 0.05  # shared tensors are measured one by one when together they cause this part of the error
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class Point:
    """One quantization of the INT8 model, on the FP32 graph's tensor ``tensor``: ``kind`` is ``tensor``
    (Q/DQ with ``scale``, ``zero_point``, ``axis``), ``weight`` (the initializer replaced by ``value``,
    its dequantized values, for node ``owners``' input ``index``) or ``dynamic`` (DynamicQuantizeLinear
    for node ``owners``' input ``index``). ``owners``: the quantized nodes that need it."""

    kind: str
    tensor: str
    owners: frozenset[str]
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    axis: int | None = None
    value: np.ndarray | None = None
    index: int = 0


@dataclass
class Fallback:
    """A unit the guard can keep in FP32: its ``nodes``; ``gain``, the relative output error energy
    (against FP32, on the probe) of the FP32 model with only the quantization applied that keeping these
    nodes in FP32 takes away (output noise adds up: that is what the INT8 model loses with them excluded),
    and that model's ``fidelity``; ``share``, the nodes' part of the quantized nodes' multiply-accumulates
    (the estimate of what keeping them in FP32 costs in time)."""

    nodes: tuple[str, ...]
    gain: float
    share: float
    fidelity: Fidelity | None = None

    @property
    def ratio(self) -> float:
        """Output error taken away per share of the compute kept in FP32 (higher first)."""
        return max(self.gain, 0.0) / (self.share + TRANSITION_SHARE)


@dataclass
class Ranking:
    """What :func:`rank_fallbacks` measured: the simulated INT8 model's ``error`` (relative output error
    energy against FP32) and fidelity, the units best first, every quantized node's multiply-accumulate
    share (``shares``) and how many probe samples."""

    error: float
    fidelity: Fidelity | None
    fallbacks: list[Fallback]
    shares: dict[str, float] = field(default_factory=dict)
    samples: int = 0


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    zero = np.zeros_like(scale) if zero is None else zero
    shape = [1] * q.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis % q.ndim] = scale.size
    return ((q.astype(np.float64) - zero.astype(np.float64).reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def static_points(fp32_model, qdq_model) -> tuple[list[Point], list[str]]:
    """The points of an ORT QDQ model against the FP32 graph it was quantized from (node names shared),
    and its quantized nodes (those ``nodes_to_exclude`` can name): nodes fed by a DequantizeLinear that
    have a quantized weight or whose every output is quantized."""
    from onnx import numpy_helper

    fp_names = {n.name for n in fp32_model.graph.node}
    fp_tensors = ({t for n in fp32_model.graph.node for t in (*n.input, *n.output)}
                  | {i.name for i in fp32_model.graph.input})
    inits = {t.name: t for t in qdq_model.graph.initializer}
    producer = {t: n for n in qdq_model.graph.node for t in n.output}
    consumers: dict[str, list] = {}
    for n in qdq_model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)

    def value(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    quantized, weights = [], []
    for n in qdq_model.graph.node:
        if n.op_type in _QDQ or n.name not in fp_names:
            continue
        fed = [producer.get(t) for t in n.input]
        dqs = [(i, d) for i, d in enumerate(fed) if d is not None and d.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        wts = [(i, d) for i, d in dqs if d.input[0] in inits]
        outs_q = all(c.op_type == "QuantizeLinear" for t in n.output for c in consumers.get(t, [])) and any(
            consumers.get(t) for t in n.output)
        if wts or outs_q:
            quantized.append(n.name)
            weights += [(n.name, i, d) for i, d in wts]
    qset = set(quantized)
    fp_node = {n.name: n for n in fp32_model.graph.node}
    points = []
    for name, i, dq in weights:
        q, scale = value(dq.input[0]), value(dq.input[1])
        zero = value(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if q is None or scale is None or i >= len(fp_node[name].input):
            continue
        points.append(Point("weight", fp_node[name].input[i], frozenset({name}),
                            value=_dequantize(q, scale, zero, _axis(dq)), index=i))
    for qn in qdq_model.graph.node:
        if qn.op_type != "QuantizeLinear" or qn.input[0] in inits:
            continue
        dqs = [c for c in consumers.get(qn.output[0], []) if c.op_type == "DequantizeLinear"]
        if not dqs:
            continue
        tensor = qn.input[0] if qn.input[0] in fp_tensors else next(
            (d.output[0] for d in dqs if d.output[0] in fp_tensors), None)
        if tensor is None:
            continue
        near = [producer.get(qn.input[0])] + [c for d in dqs for c in consumers.get(d.output[0], [])]
        owners = frozenset(n.name for n in near if n is not None and n.name in qset)
        scale = value(qn.input[1])
        zero = value(qn.input[2]) if len(qn.input) > 2 and qn.input[2] else None
        if scale is None:
            continue
        points.append(Point("tensor", tensor, owners, scale=scale, zero_point=zero, axis=_axis(qn)))
    return points, quantized


def dynamic_points(fp32_model, per_channel: bool = True, reduce_range: bool = False,
                   weights: str = "int8") -> tuple[list[Point], list[str]]:
    """The points of ORT's dynamic INT8 on the MatMuls with constant 2-D weights: the input through
    DynamicQuantizeLinear (uint8, per batch), the weight quantized per output column (``per_channel``)
    or per tensor, int8 symmetric or uint8 asymmetric, 7-bit with ``reduce_range``."""
    from onnx import numpy_helper

    inits = {t.name: t for t in fp32_model.graph.initializer}
    points, nodes = [], []
    for n in fp32_model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits or len(inits[n.input[1]].dims) != 2:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        axis = 0 if per_channel else None
        if weights == "uint8":
            qmax = 127 if reduce_range else 255
            lo = np.minimum(w.min(axis=axis, keepdims=True), 0)
            hi = np.maximum(w.max(axis=axis, keepdims=True), 0)
            scale = np.where(hi > lo, (hi - lo) / qmax, 1.0)
            zero = np.round(-lo / scale)
            wq = (np.clip(np.round(w / scale) + zero, 0, qmax) - zero) * scale
        else:
            qmax = 64 if reduce_range else 127
            scale = np.abs(w).max(axis=axis, keepdims=True) / qmax
            scale = np.where(scale > 0, scale, 1.0)
            wq = np.clip(np.round(w / scale), -qmax, qmax) * scale
        nodes.append(n.name)
        points.append(Point("weight", n.input[1], frozenset({n.name}), value=wq.astype(np.float32), index=1))
        points.append(Point("dynamic", n.input[0], frozenset({n.name}), index=0))
    return points, nodes


def _fake_quant(p: Point, tag: str, source: str, target: str, rank: int | None) -> tuple[list, list]:
    """Nodes (and initializers) computing ``target`` = ``source`` quantized and dequantized as ``p`` says,
    in plain arithmetic (ONNX Runtime's optimizers would fuse QuantizeLinear/DequantizeLinear pairs into
    integer kernels): ``(clip(round(x / s) + z, qmin, qmax) - z) * s``."""
    from onnx import helper, numpy_helper

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), tag + name)

    def op(kind, inputs, out, **attrs):
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    nodes: list = []
    if p.kind == "dynamic":  # DynamicQuantizeLinear: uint8, range over the whole tensor, including 0
        inits = [const("zero", 0.0), const("qmax", 255.0), const("tiny", 1e-30)]
        lo = op("Min", [op("ReduceMin", [source], tag + "rmin", keepdims=0), tag + "zero"], tag + "lo")
        hi = op("Max", [op("ReduceMax", [source], tag + "rmax", keepdims=0), tag + "zero"], tag + "hi")
        scale = op("Max", [op("Div", [op("Sub", [hi, lo], tag + "span"), tag + "qmax"], tag + "s0"), tag + "tiny"],
                   tag + "s")
        zero = op("Clip", [op("Round", [op("Neg", [op("Div", [lo, scale], tag + "lz")], tag + "nz")], tag + "rz"),
                           tag + "zero", tag + "qmax"], tag + "z")
        qmin_name, qmax_name = tag + "zero", tag + "qmax"
    else:
        scale_v = p.scale.astype(np.float32)
        zero_v = (np.zeros_like(scale_v) if p.zero_point is None else p.zero_point.astype(np.float32))
        if scale_v.size > 1:
            shape = [-1] + [1] * (rank - 1 - (p.axis or 1) % rank)
            scale_v, zero_v = scale_v.reshape(shape), zero_v.reshape(shape)
        info = np.iinfo(p.zero_point.dtype if p.zero_point is not None else np.uint8)
        inits = [const("s", scale_v), const("z", zero_v), const("qmin", float(info.min)), const("qmax", float(info.max))]
        scale, zero, qmin_name, qmax_name = tag + "s", tag + "z", tag + "qmin", tag + "qmax"
    # round(x / s + z) clipped to [qmin, qmax], minus z, is round(x / s) clipped to [qmin - z, qmax - z]
    r = op("Round", [op("Div", [source, scale], tag + "x")], tag + "r")
    if p.kind != "dynamic" and p.scale.size == 1:
        lo_v, hi_v = float(info.min) - float(zero_v), float(info.max) - float(zero_v)
        inits += [const("lo", lo_v), const("hi", hi_v)]
        op("Mul", [op("Clip", [r, tag + "lo", tag + "hi"], tag + "c"), scale], target)
    else:
        low = op("Sub", [qmin_name, zero], tag + "low")
        high = op("Sub", [qmax_name, zero], tag + "high")
        op("Mul", [op("Min", [op("Max", [r, low], tag + "m"), high], tag + "c"), scale], target)
    return nodes, inits


def simulate(fp32_model, points: list[Point], excluded: set[str] | frozenset[str] = frozenset()):
    """A copy of ``fp32_model`` with every point applied that a quantized node outside ``excluded`` still
    owns (a point without owners always applies)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    graph = model.graph
    del graph.value_info[:]
    active = [p for p in points if not p.owners or not p.owners <= excluded]
    position = {n.name: k for k, n in enumerate(graph.node)}
    producer_pos = {t: k for k, n in enumerate(graph.node) for t in n.output}
    ranks = _ranks(fp32_model)
    before: dict[int, list] = {}  # node position -> nodes to insert before it
    for k, p in enumerate(active):
        tag = f"{p.tensor}__sim{k}_"
        if p.kind == "weight":
            graph.node[position[next(iter(p.owners))]].input[p.index] = tag + "w"
            graph.initializer.append(numpy_helper.from_array(p.value, tag + "w"))
            continue
        if p.kind == "dynamic":
            pos = position[next(iter(p.owners))]
            nodes, inits = _fake_quant(p, tag, p.tensor, tag + "out", None)
            graph.node[pos].input[p.index] = tag + "out"
        elif p.tensor in producer_pos:  # the producer writes a raw tensor, the fake quantization the name
            pos = producer_pos[p.tensor] + 1
            prod = graph.node[pos - 1]
            for j, t in enumerate(prod.output):
                if t == p.tensor:
                    prod.output[j] = tag + "raw"
            nodes, inits = _fake_quant(p, tag, tag + "raw", p.tensor, ranks.get(p.tensor))
        else:  # a graph input: its consumers read the fake quantization
            pos = 0
            for n in graph.node:
                for j, t in enumerate(n.input):
                    if t == p.tensor:
                        n.input[j] = tag + "out"
            nodes, inits = _fake_quant(p, tag, p.tensor, tag + "out", ranks.get(p.tensor))
        before.setdefault(pos, []).extend(nodes)
        graph.initializer.extend(inits)
    nodes = list(graph.node)
    ordered = []
    for pos in range(len(nodes) + 1):
        ordered += before.get(pos, [])
        if pos < len(nodes):
            ordered.append(nodes[pos])
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _ranks(model) -> dict[str, int]:
    return {v.name: len(v.type.tensor_type.shape.dim)
            for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}


def node_macs(fp32_model) -> dict[str, int]:
    """Multiply-accumulates per sample of each node, from ONNX shape inference (symbolic dimensions
    count as 1): Conv output elements x input channels per group x kernel size, MatMul/Gemm output
    elements x the inner dimension, anything else its output elements."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(fp32_model)
    shapes = {}
    for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for t in fp32_model.graph.initializer:
        shapes[t.name] = list(t.dims)
    macs = {}
    for n in fp32_model.graph.node:
        out = shapes.get(n.output[0]) if n.output else None
        elems = int(np.prod(out[1:])) if out else 0
        inner = 1
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and shapes.get(n.input[1]):
            w = shapes[n.input[1]]
            inner = int(np.prod(w[1:])) if n.op_type == "Conv" else int(w[0] * np.prod(w[2:]))
        elif n.op_type in ("MatMul", "Gemm") and shapes.get(n.input[0]):
            a = shapes[n.input[0]]
            trans = any(x.name == "transA" and x.i for x in n.attribute)
            inner = a[-2] if trans and len(a) > 1 else a[-1]
        macs[n.name] = max(elems * inner, 1)
    return macs


def rank_fallbacks(fp32_path: str | Path, probe: Dataset, *, qdq_path: str | Path | None = None,
                   dynamic: dict | None = None, excluded: tuple[str, ...] = (), threads: int | None = 1,
                   progress: Callable[[str], None] | None = None) -> Ranking:
    """Measure on ``probe`` how much of the INT8 model's output error each unit's quantization causes.

    ``fp32_path`` is the FP32 graph that was quantized (``keep_preprocessed``), ``qdq_path`` the static
    QDQ model; for dynamic quantization pass ``dynamic`` (``per_channel``, ``reduce_range``, ``weights``)
    instead. Units are each quantized node, and the nodes sharing each quantized tensor (only together
    do they take it away); ``excluded`` nodes are FP32 already. Each node is scored by the FP32 model with
    only the points it alone owns (one run over the probe set each); the tensors shared by several nodes
    are measured together once, and one by one when together they cause at least :data:`SHARED_MIN` of
    the simulated INT8 model's error (``Ranking.error``); a unit's gain is the sum of what it takes away
    (:class:`Fallback`). ``progress`` hears of every tenth run. Returns units best first by
    :attr:`Fallback.ratio`, those that take away no error last."""
    import onnx

    from toolchain.runtime.outputs import run_outputs
    from toolchain.runtime.session import create_session

    say = progress or (lambda _text: None)
    fp32 = onnx.load(str(fp32_path))
    if qdq_path is not None:
        points, quantized = static_points(fp32, onnx.load(str(qdq_path)))
    else:
        points, quantized = dynamic_points(fp32, **(dynamic or {}))
    done = frozenset(excluded)
    points = [p for p in points if not p.owners or not p.owners <= done]
    macs = node_macs(fp32)
    total = sum(macs.get(n, 1) for n in quantized) or 1
    shares = {n: macs.get(n, 1) / total for n in quantized}
    classifier = is_classifier(fp32_path)

    def measure(model) -> tuple[float, Fidelity]:
        session = create_session(model.SerializeToString(), ["cpu"], threads=threads, optimization="all")
        out = pooled(run_outputs(session, probe, batch=8), probe)
        diff = reference.reshape(len(reference), -1).astype(np.float64) - out.reshape(len(out), -1)
        return float((diff ** 2).sum() / max(energy, 1e-30)), fidelity(reference, out, None, classifier)

    say(f"simulating INT8 on {len(probe)} samples")
    reference = pooled(run_outputs(create_session(str(fp32_path), ["cpu"], threads=threads), probe, batch=8), probe)
    energy = float((reference.astype(np.float64) ** 2).sum())
    base_error, base_fid = measure(simulate(fp32, points, done))
    groups: dict[frozenset, list[Point]] = {}  # points by the nodes that must all be FP32 to take them away
    for p in points:
        if p.owners:
            groups.setdefault(p.owners - done, []).append(p)
    singles = [n for n in quantized if n not in done]
    shared = [g for g in groups if len(g) > 1]
    gains: dict[frozenset, float] = {}
    fids: dict[frozenset, Fidelity] = {}
    if shared:  # quantized tensors between two quantized nodes: measured one by one only when they matter
        joint, _ = measure(simulate(fp32, [p for g in shared for p in groups[g]]))
        if joint < SHARED_MIN * base_error:
            shared = []
    for k, unit in enumerate([frozenset({n}) for n in singles] + shared):
        if k % 10 == 0:
            say(f"measuring fallback {k + 1}/{len(singles) + len(shared)} on {len(probe)} samples")
        gains[unit], fids[unit] = measure(simulate(fp32, groups.get(unit, []))) if unit in groups else (0.0, base_fid)
    fallbacks = []
    for unit in [frozenset({n}) for n in singles] + shared:
        ordered = tuple(n for n in quantized if n in unit)
        gain = sum(g for u, g in gains.items() if u <= unit)  # output noise adds up
        fallbacks.append(Fallback(ordered, gain, sum(shares[n] for n in ordered),
                                  fids[unit] if len(unit) == 1 else None))
    fallbacks.sort(key=lambda f: (-f.ratio, -f.gain, len(f.nodes)))
    return Ranking(base_error, base_fid, fallbacks, shares, len(probe))
