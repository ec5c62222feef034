"""SmoothQuant on an FP32 ONNX graph: move activation outliers into the weights before INT8.

INT8 activations share one scale per tensor, so a few channels of large magnitude (BERT's layer-norm
outputs and GELU outputs have them) leave the other channels a handful of levels. For a MatMul (or a
fused ``Attention``) with a constant weight ``W`` fed by ``X``, ``X @ W == (X / s) @ (s * W)`` for any
positive per-input-channel ``s``; with ``s_j = max|X_j|^a / max|W_j|^(1-a)`` (Xiao et al., SmoothQuant,
2023; ``a`` the migration strength, ``max|X_j|`` over calibration samples) the activation becomes flat
and the weight, quantized per output column, absorbs the difference.

``1/s`` goes where it costs nothing when it can: into the ``gamma``/``beta`` of the layer norm
(``LayerNormalization``, ``SkipLayerNormalization``, ``EmbedLayerNormalization``) that produces ``X``, or
into the value columns of the ``Attention`` node that produces it, when nothing else reads ``X``. In a
post-LN transformer (BERT) the layer norm's output is also the residual, so there a ``Mul`` by ``1/s``
(one elementwise pass, negligible next to the MatMul) feeds the smoothed consumers. The function of the
graph is unchanged up to float rounding; numpy only, no torch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.data.dataset import Dataset

# where the scale and shift of each layer norm sit among its inputs
NORMS = {"LayerNormalization": (1, 2), "SkipLayerNormalization": (2, 3), "EmbedLayerNormalization": (5, 6)}
SMOOTHABLE = ("MatMul", "Attention")


@dataclass
class SmoothResult:
    """What :func:`smooth_model` did: the smoothed consumers (``nodes``), how many activations had
    ``1/s`` folded into their layer norm (``folded``) and how many got a ``Mul`` node (``inserted``)."""

    alpha: float
    nodes: list[str] = field(default_factory=list)
    folded: int = 0
    inserted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "nodes": len(self.nodes), "folded": self.folded, "inserted": self.inserted}


def smoothing_targets(model, after_norm: bool = True) -> dict[str, list]:
    """The nodes :func:`smooth_model` may smooth, grouped by the activation they read: MatMuls whose
    second input is a constant 2-D weight and ``Attention`` nodes with a constant weight, and with
    ``after_norm`` only those reading the first output of a layer norm (:data:`NORMS`). Returns
    ``{activation name: [node, ...]}``."""
    weights = {t.name: t for t in model.graph.initializer}
    norm_outputs = {n.output[0] for n in model.graph.node if n.op_type in NORMS and n.output}
    groups: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type in SMOOTHABLE and len(node.input) > 1 and node.input[1] in weights \
                and len(weights[node.input[1]].dims) == 2 and (not after_norm or node.input[0] in norm_outputs):
            groups[node.input[0]].append(node)
    return dict(groups)


def channel_max(model, tensors: list[str], data: Dataset, batch: int = 8) -> dict[str, np.ndarray]:
    """Largest absolute value of each last-axis channel of ``tensors`` over every sample of ``data``,
    from ONNX Runtime (CPU, graph optimizations off so that the tensors survive)."""
    import onnx

    from toolchain.runtime.session import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = create_session(probe.SerializeToString(), ["cpu"], optimization="disable")
    wanted = [o.name for o in session.get_outputs()]
    peaks: dict[str, np.ndarray] = {}
    for feeds in data.batches(batch):
        for name, value in zip(wanted, session.run(wanted, feeds), strict=True):
            if name in tensors:
                peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def smoothing_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``, 1 where either is zero, float64."""
    x = np.asarray(x_max, np.float64)
    w = np.asarray(w_max, np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1 - alpha)
    return s


def smooth_model(model, data: Dataset, *, alpha: float = 0.5, exclude: tuple[str, ...] = (),
                 after_norm: bool = True, batch: int = 8) -> SmoothResult:
    """SmoothQuant ``model`` (an FP32 ``onnx.ModelProto``, changed in place) with calibration ``data``:
    see the module docstring. ``exclude`` names nodes left as they are (those kept in FP32 need no
    smoothing); ``after_norm`` limits smoothing to MatMuls fed by a layer norm (see
    :func:`smoothing_targets`). Returns what was done (:class:`SmoothResult`)."""
    from onnx import numpy_helper

    if not 0.0 <= alpha <= 1.0:
        raise ToolchainError(f"SmoothQuant migration strength must be within [0, 1], not {alpha}")
    if len(data) == 0:
        raise ToolchainError("SmoothQuant needs calibration data, and the calibration set is empty")
    result = SmoothResult(alpha)
    groups = {x: [n for n in nodes if n.name not in exclude]
              for x, nodes in smoothing_targets(model, after_norm).items()}
    groups = {x: nodes for x, nodes in groups.items() if nodes}
    if not groups:
        return result
    x_max = channel_max(model, list(groups), data, batch)
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)
    producers = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    order = {n.name: i for i, n in enumerate(model.graph.node)}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    def put(node, index: int, value: np.ndarray) -> None:
        """Write ``value`` as input ``index`` of ``node``: a fresh initializer if others read the old one."""
        old = inits[node.input[index]]
        if sum(name == old.name for n in model.graph.node for name in n.input) > 1:
            new_name = f"{old.name}_smoothed_{node.name}"
            tensor = numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype), new_name)
            model.graph.initializer.append(tensor)
            inits[new_name] = tensor
            node.input[index] = new_name
        else:
            old.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(old).dtype), old.name))

    new_nodes: list[tuple[Any, Any]] = []
    for x, nodes in groups.items():
        if x not in x_max or x_max[x].shape[0] != inits[nodes[0].input[1]].dims[0]:
            continue
        w_max = np.max([np.abs(array(n.input[1])).max(axis=1) for n in nodes], axis=0)
        s = smoothing_scales(x_max[x], w_max, alpha)
        for n in nodes:
            put(n, 1, array(n.input[1]) * s[:, None])
        result.nodes.extend(n.name for n in nodes)
        producer = producers.get(x)
        only_targets = x not in graph_outputs and all(r in nodes for r in readers[x])
        if only_targets and producer is not None and _fold_into(producer, x, 1 / s, array, put, inits):
            result.folded += 1
            continue
        import onnx

        scale_name = f"{x}_smooth_inv_scale"
        model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), scale_name))
        scaled = f"{x}_smoothed"
        mul = onnx.helper.make_node("Mul", [x, scale_name], [scaled], name=f"{nodes[0].name}_smooth_mul")
        for n in nodes:
            n.input[0] = scaled
        new_nodes.append((min(nodes, key=lambda n: order[n.name]), mul))
        result.inserted += 1
    for before, mul in new_nodes:  # keep the graph topologically sorted: each Mul just before its reader
        position = list(model.graph.node).index(before)
        model.graph.node.insert(position, mul)
    return result


def _fold_into(producer, x: str, inv_s: np.ndarray, array, put, inits) -> bool:
    """Fold ``x * inv_s`` into ``producer``, a layer norm whose first output is ``x``: gamma and beta
    times ``inv_s``. False when its parameters are not constants."""
    if producer.output[0] != x or producer.op_type not in NORMS:
        return False
    indices = [i for i in NORMS[producer.op_type] if i < len(producer.input) and producer.input[i]]
    if NORMS[producer.op_type][0] not in indices or not all(producer.input[i] in inits for i in indices):
        return False
    for i in indices:
        put(producer, i, array(producer.input[i]) * inv_s)
    return True
    return False

