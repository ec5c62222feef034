"""Cross-layer equalization of an FP32 ONNX graph before quantization (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction", section 4.1).

For two consecutive convolutions ``conv1 -> [activation] -> conv2`` (depthwise ones included), output
channel ``i`` of ``conv1`` (weights and bias) is divided by ``s_i`` and input channel ``i`` of ``conv2``
multiplied by it, with ``s_i = sqrt(r1_i / r2_i)`` from the channels' weight ranges ``r`` (max abs);
both ranges become ``sqrt(r1_i r2_i)``. Chains (expand -> depthwise -> project) are swept until the
scales settle. With a piecewise-linear activation between them that is positively homogeneous (ReLU,
none) the function is unchanged. ReLU6 (``Clip(0, 6)``) is not: ``Clip(y / s, 0, 6) != Clip(y, 0, 6) / s``.
``relu6`` says what to do there:

* ``"skip"``: leave such pairs alone (exact, but in MobileNet/EfficientNet-Lite that is nearly every pair);
* ``"relu"``: the paper's choice, replace the ``Clip(0, 6)`` by ``Relu`` and equalize: the FP32 function
  changes wherever a pre-activation exceeds 6. :func:`equalize` measures that change on ``check`` inputs
  and reports it (``fp32_max_abs_change``, ``fp32_top1_agreement``); it is never silent.

Per-channel weight quantization already gives every output channel its own scale, so equalization
changes the int8 weights only through ``conv2``'s input channels of a non-depthwise ``conv2``, and the
per-tensor activation between the two: measure it with per-channel weights, it was made for per-tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolchain.quantize.layerstats import attribute, session

RELU6_MODES = ("skip", "relu")


def _clip_bounds(node, inits: dict) -> tuple[float | None, float | None] | None:
    from onnx import numpy_helper

    if node.op_type == "Relu":
        return 0.0, None
    if node.op_type != "Clip":
        return None
    if len(node.input) == 1:  # opset < 11: attributes
        return attribute(node, "min", None), attribute(node, "max", None)
    vals = []
    for i in (1, 2):
        if len(node.input) <= i or not node.input[i]:
            vals.append(None)
        elif node.input[i] in inits:
            vals.append(float(numpy_helper.to_array(inits[node.input[i]])))
        else:
            return None
    return vals[0], vals[1]


def find_pairs(model) -> list[dict[str, Any]]:
    """The equalizable ``conv1 -> [Relu | Clip] -> conv2`` pairs of ``model``: both convolutions 2-D with
    initializer weights used once, ``conv1`` plain or depthwise, ``conv2`` plain or depthwise
    (one output per input channel), every intermediate tensor used once. Each pair: ``conv1``,
    ``conv2`` (nodes), ``act`` (the activation node or None) and ``kind`` (``none``, ``relu``, ``relu6``
    or ``clip``: another Clip, never equalized)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    outputs = {o.name for o in g.output}

    def single(name: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    def conv_ok(n) -> bool:
        return (n.op_type == "Conv" and len(n.input) >= 2 and n.input[1] in inits
                and len(inits[n.input[1]].dims) == 4 and len(consumers.get(n.input[1], [])) == 1
                and (len(n.input) < 3 or not n.input[2] or (n.input[2] in inits and len(consumers[n.input[2]]) == 1)))

    pairs = []
    for c1 in g.node:
        if not conv_ok(c1):
            continue
        w1 = inits[c1.input[1]]
        g1 = int(attribute(c1, "group", 1))
        if g1 != 1 and not (g1 == w1.dims[0] and w1.dims[1] == 1):
            continue
        nxt, act, kind = single(c1.output[0]), None, "none"
        if nxt is not None and nxt.op_type in ("Relu", "Clip"):
            bounds = _clip_bounds(nxt, inits)
            if bounds is None or bounds[0] != 0.0:
                continue
            act = nxt
            kind = "relu" if bounds[1] is None else ("relu6" if bounds[1] == 6.0 else "clip")
            nxt = single(nxt.output[0])
        if nxt is None or not conv_ok(nxt):
            continue
        w2 = inits[nxt.input[1]]
        g2 = int(attribute(nxt, "group", 1))
        depthwise2 = g2 == w1.dims[0] and w2.dims[0] == g2 and w2.dims[1] == 1
        if not (g2 == 1 and w2.dims[1] == w1.dims[0]) and not depthwise2:
            continue
        pairs.append({"conv1": c1, "conv2": nxt, "act": act, "kind": kind, "depthwise2": depthwise2})
    return pairs


def equalize(model, *, relu6: str = "relu", iterations: int = 20, tolerance: float = 1e-3,
             check: dict[str, np.ndarray] | None = None, threads: int = 1) -> tuple[Any, dict]:
    """Cross-layer equalized copy of FP32 ``model`` (onnx ModelProto; see the module text for
    ``relu6``), sweeping all pairs up to ``iterations`` times until no scale moves by more than
    ``tolerance`` (relative). ``check``: inputs (``{name: array}``) on which to compare the first
    output before and after; default: one normal(0, 1) sample of the first input's shape (symbolic
    dimensions 1). Returns the model and what was done: ``pairs`` equalized (by kind), ``clips_replaced``,
    ``sweeps``, the range spread (max/min of the per-channel weight ranges, median over equalized layers)
    before and after, and the ``fp32_max_abs_change`` / ``fp32_top1_agreement`` of the first output on
    ``check`` (relative change ``fp32_rel_change``: max abs change / max abs output)."""
    import onnx
    from onnx import helper, numpy_helper

    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6 must be one of {', '.join(RELU6_MODES)}, not {relu6!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    pairs = [p for p in find_pairs(out) if p["kind"] in ("none", "relu") or (p["kind"] == "relu6" and relu6 == "relu")]
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64) for p in pairs
              for name in list(p["conv1"].input[1:3]) + [p["conv2"].input[1]] if name}

    def ranges1(p):
        w = arrays[p["conv1"].input[1]]
        return np.abs(w).reshape(w.shape[0], -1).max(1)

    def ranges2(p):
        w = arrays[p["conv2"].input[1]]
        return np.abs(w).reshape(w.shape[0], -1).max(1) if p["depthwise2"] else np.abs(w).max(axis=(0, 2, 3))

    def spread(r):
        r = r[r > 0]
        return float(r.max() / r.min()) if r.size else 1.0

    before = [spread(ranges1(p)) for p in pairs]
    sweeps = 0
    while sweeps < iterations:
        sweeps += 1
        moved = 0.0
        for p in pairs:
            r1, r2 = ranges1(p), ranges2(p)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1)), 1.0)
            moved = max(moved, float(np.max(np.abs(s - 1))))
            w1 = arrays[p["conv1"].input[1]]
            arrays[p["conv1"].input[1]] = w1 / s.reshape(-1, 1, 1, 1)
            if len(p["conv1"].input) > 2 and p["conv1"].input[2]:
                arrays[p["conv1"].input[2]] = arrays[p["conv1"].input[2]] / s
            w2 = arrays[p["conv2"].input[1]]
            arrays[p["conv2"].input[1]] = w2 * (s.reshape(-1, 1, 1, 1) if p["depthwise2"] else s.reshape(1, -1, 1, 1))
        if moved < tolerance:
            break
    after = [spread(ranges1(p)) for p in pairs]
    for name, arr in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    replaced = 0
    for p in pairs:
        if p["kind"] == "relu6":
            act = p["act"]
            act.CopyFrom(helper.make_node("Relu", [act.input[0]], list(act.output), name=act.name))
            replaced += 1
    info: dict[str, Any] = {
        "pairs": len(pairs), "by_kind": {k: sum(p["kind"] == k for p in pairs) for k in ("none", "relu", "relu6")},
        "skipped_relu6": sum(p["kind"] == "relu6" for p in find_pairs(model)) if relu6 == "skip" else 0,
        "clips_replaced": replaced, "sweeps": sweeps, "relu6": relu6,
        "range_spread_before": float(np.median(before)) if before else None,
        "range_spread_after": float(np.median(after)) if after else None,
        "pair_names": [[p["conv1"].name, p["conv2"].name] for p in pairs]}
    info.update(fp32_change(model, out, check, threads=threads))
    return out, info


def fp32_change(before, after, check: dict[str, np.ndarray] | None = None, *, threads: int = 1) -> dict[str, float]:
    """How much the first output of FP32 model ``after`` differs from ``before`` on ``check`` inputs
    (default: one normal(0, 1) sample of each input's shape, symbolic dimensions 1): max abs change,
    that relative to the output's max abs, and top-1 agreement over the samples (last axis)."""
    if check is None:
        rng = np.random.default_rng(0)
        check = {}
        for inp in before.graph.input:
            dims = [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
            check[inp.name] = rng.standard_normal(dims).astype(np.float32)
    a = session(before.SerializeToString(), optimize=True, threads=threads).run(None, check)[0]
    b = session(after.SerializeToString(), optimize=True, threads=threads).run(None, check)[0]
    diff = float(np.max(np.abs(a - b)))
    top1 = float(np.mean(a.reshape(len(a), -1).argmax(-1) == b.reshape(len(b), -1).argmax(-1)))
    return {"fp32_max_abs_change": diff, "fp32_rel_change": diff / max(float(np.max(np.abs(a))), 1e-30),
            "fp32_top1_agreement": top1, "check_samples": len(a)}
