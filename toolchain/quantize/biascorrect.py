"""Empirical bias correction of a QDQ model (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", section 4.2, the empirical variant).

Rounding weights shifts the mean of a layer's output: ``E[(w~ - w) x]`` per output channel is not zero
when the inputs have a non-zero mean (after ReLU6 they always do) and the rounding errors of a channel
do not cancel (depthwise channels have 9 or 25 weights). :func:`correct_bias` measures that shift on
calibration samples and subtracts it from the bias the QDQ model carries (the float bias ORT quantizes
at load time, or the int32 bias of older onnxruntime, in units of input scale x weight scale).

``mode="weights"`` corrects the shift the layer's own weight rounding causes, on the QDQ model's inputs
(``(w - w~) E[x_q]``): each layer's correction is local, so all are computed in one pass.
``mode="full"`` matches the FP32 mean output (``w E[x_f] - w~ E[x_q]``), shift from upstream layers
included; computed for all layers at once, a layer's correction ignores those of the layers above it,
so ``rounds`` passes each correct what is left (a fixed-point iteration; measured, not assumed, to help).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolchain.data.dataset import Dataset
from toolchain.quantize.layerstats import initializers, layer_stats, quant_layers, weight_matrix


def correct_bias(fp32, qdq, calibration: Dataset, *, mode: str = "weights", rounds: int = 1,
                 nodes: list[str] | None = None, batch: int = 8, threads: int = 1) -> tuple[Any, dict]:
    """Bias-corrected copy of QDQ model ``qdq`` (onnx ModelProto), quantized from the FP32 graph
    ``fp32``, measured on ``calibration``. ``mode``: ``weights`` or ``full`` (see the module text);
    ``rounds``: passes over the data (``full`` only); ``nodes``: the Conv/Gemm node names to correct
    (default: every quantized one). Returns the model and a summary: layers corrected, and per layer
    the mean absolute shift removed relative to the output's standard deviation over the calibration
    data (``relative_shift``)."""
    import onnx
    from onnx import numpy_helper

    if mode not in ("weights", "full"):
        raise ValueError(f"mode must be weights or full, not {mode!r}")
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    layers = [ly for ly in quant_layers(fp32, model) if ly.bias and (nodes is None or ly.node in nodes)]
    fp_inits = initializers(fp32)
    fp_nodes = {n.name: n for n in fp32.graph.node}
    shifts: dict[str, float] = {}
    passes = rounds if mode == "full" else 1
    for _ in range(passes):
        stats = layer_stats(fp32, model, calibration, layers, batch=batch, threads=threads)
        inits = initializers(model)
        for ly in layers:
            st = stats[ly.node]
            w_int = numpy_helper.to_array(inits[ly.weight]).astype(np.float64)
            scale = numpy_helper.to_array(inits[ly.scale]).astype(np.float64)
            w_q = weight_matrix(ly, w_int * _per_output(scale, w_int, ly))
            w_fp = weight_matrix(ly, numpy_helper.to_array(fp_inits[fp_nodes[ly.node].input[1]]).astype(np.float64))
            if mode == "weights":
                delta = np.einsum("gok,gk->go", w_fp - w_q, st.mean_q)
            else:
                delta = np.einsum("gok,gk->go", w_fp, st.mean_f) - np.einsum("gok,gk->go", w_q, st.mean_q)
            delta = delta.reshape(-1)
            var = (np.einsum("gok,gok->go", np.matmul(w_q, st.gram_qq), w_q)
                   - np.einsum("gok,gk->go", w_q, st.mean_q) ** 2)
            std = np.sqrt(np.maximum(var.reshape(-1), 1e-12))
            shifts[ly.node] = shifts.get(ly.node, 0.0) + float(np.mean(np.abs(delta) / std))
            _add_to_bias(model, inits, ly, delta)
    worst = sorted(shifts.items(), key=lambda kv: -kv[1])[:5]
    return model, {"mode": mode, "rounds": passes, "layers": len(layers),
                   "relative_shift": {k: round(v, 5) for k, v in shifts.items()},
                   "largest": [k for k, _ in worst]}


def _per_output(scale: np.ndarray, w: np.ndarray, layer) -> np.ndarray:
    """``scale`` shaped to broadcast over the weight tensor ``w`` (axis 0 for Conv, the output axis for Gemm)."""
    if scale.size == 1:
        return scale.reshape(())
    if layer.op == "Gemm":
        return scale.reshape(-1, 1) if layer.trans_b else scale.reshape(1, -1)
    return scale.reshape((-1,) + (1,) * (w.ndim - 1))


def _add_to_bias(model, inits: dict, layer, delta: np.ndarray) -> None:
    """Add ``delta`` (one value an output channel) to the layer's bias initializer, in place."""
    from onnx import numpy_helper

    tensor = inits[layer.bias]
    bias = numpy_helper.to_array(tensor)
    if layer.bias_int:  # int32 bias in units of input scale x weight scale: find that scale
        bias_scale = _int_bias_scale(model, layer)
        new = np.round(bias.astype(np.float64) + delta / bias_scale).astype(np.int32)
    else:
        new = (bias.astype(np.float64) + delta).astype(bias.dtype)
    users = sum(1 for n in model.graph.node for x in n.input if x == layer.bias)
    if users > 1:
        raise ValueError(f"{layer.node}: bias {layer.bias} is shared by {users} nodes")
    tensor.CopyFrom(numpy_helper.from_array(new, layer.bias))


def _int_bias_scale(model, layer) -> np.ndarray:
    from onnx import numpy_helper

    inits = initializers(model)
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] == layer.bias:
            return numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
    raise ValueError(f"{layer.node}: no DequantizeLinear for bias {layer.bias}")
