"""AdaRound, learned weight rounding for a QDQ model (Nagel et al. 2020, "Up or Down? Adaptive Rounding
for Post-Training Quantization"), in numpy.

Each weight ``w`` of a quantized Conv/Gemm becomes ``s * (floor(w / s) + h(V))`` with ``s`` the weight
scale ORT chose (unchanged) and ``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` the rectified
sigmoid; ``V`` minimizes the layer's expected output error ``E[((w~ - w) x_q)^2]`` on the QDQ model's
own (dequantized) inputs ``x_q``, plus ``lam * sum(1 - |2h - 1|^beta)`` with ``beta`` annealed from 20 to 2, which drives
every ``h`` to 0 or 1. The error is a quadratic form in the weights, so it is computed from the input
second moments :func:`toolchain.quantize.layerstats.layer_stats` gathers, one pass over the data, and
the optimisation (Adam on ``V``) never touches the samples again.

The objective is local on purpose. The paper's asymmetric target ``w x_f`` (the FP32 model's input)
makes each layer also compensate the error its inputs carry; that is sound layer after layer, with the
statistics gathered again after each, but with every layer fitted from one pass each layer compensates
errors its upstream layers then remove themselves: on EfficientNet-Lite0 that took top-1 agreement from
80.8% to 40.2%. ``target="fp32"`` keeps that variant, for one layer at a time (``nodes``).

At the end ``h`` is rounded to 0 or 1, and per output channel the learned rounding is kept only where
its error (on the same objective) is below round-to-nearest's: never worse than nearest on its own
objective. The integers go into the QDQ model's int8 weight initializer; scales and zero points stay.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from toolchain.data.dataset import Dataset
from toolchain.quantize.layerstats import (
    from_weight_matrix,
    initializers,
    layer_stats,
    output_error,
    quant_layers,
    weight_matrix,
)

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """``h(V)`` of the paper: the soft rounding, in [0, 1]."""
    return np.clip(1 / (1 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0, 1)


def learn_rounding(w_fp: np.ndarray, scale: np.ndarray, gram_qq: np.ndarray, gram_qf: np.ndarray, *,
                   qmin: int = -127, qmax: int = 127, iterations: int = 1000, lr: float = 0.01,
                   lam: float = 0.01, warmup: float = 0.2, seed: int = 0) -> np.ndarray:
    """Learned integer weights (groups, outputs, K) for float weights ``w_fp`` (groups, outputs, K)
    with per-output ``scale`` (groups, outputs), minimizing ``w~ Gqq w~ - 2 w~ Gqf w`` (``gram_*``:
    (groups, K, K)) plus the rounding regularizer. Returns integers in ``[qmin, qmax]``."""
    del seed  # deterministic: V starts where h equals the fractional part
    s = scale[..., None]
    base = np.floor(w_fp / s)
    frac = w_fp / s - base
    p = np.clip((frac - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p))
    target = np.matmul(w_fp, gram_qf.transpose(0, 2, 1))  # (Gqf w) per output, fixed
    # the error's scale, so that lam means the same for every layer: the nearest rounding's error
    nearest = np.clip(np.round(w_fp / s), qmin, qmax) * s
    d = nearest - w_fp
    err0 = max(float(np.mean(np.einsum("gok,gok->go", np.matmul(d, gram_qq), d))), 1e-30)
    m, u = np.zeros_like(v), np.zeros_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8
    start = int(warmup * iterations)
    n_out = w_fp.shape[0] * w_fp.shape[1]
    for it in range(iterations):
        sig = 1 / (1 + np.exp(-v))
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(h_raw, 0, 1)
        w_int = np.clip(base + h, qmin, qmax)
        w_new = w_int * s
        # d/dw~ of the mean over outputs of (w~ Gqq w~ - 2 w~ Gqf w) / err0, plus lam * the mean over
        # outputs of the regularizer summed over the output's K weights
        grad_w = 2 * (np.matmul(w_new, gram_qq) - target) / (n_out * err0)  # Gqq is symmetric
        grad_h = grad_w * s * ((base + h >= qmin) & (base + h <= qmax))
        if it >= start:
            beta = 20 + (2 - 20) * (it - start) / max(iterations - start - 1, 1)
            t = 2 * h - 1
            grad_h = grad_h + lam * (-beta * np.abs(t) ** (beta - 1) * np.sign(t) * 2) / n_out
        grad_v = grad_h * (ZETA - GAMMA) * sig * (1 - sig) * ((h_raw > 0) & (h_raw < 1))
        m = b1 * m + (1 - b1) * grad_v
        u = b2 * u + (1 - b2) * grad_v ** 2
        v = v - lr * (m / (1 - b1 ** (it + 1))) / (np.sqrt(u / (1 - b2 ** (it + 1))) + eps)
    return np.clip(base + (rectified_sigmoid(v) >= 0.5), qmin, qmax)


def adaround(fp32, qdq, calibration: Dataset, *, nodes: list[str] | None = None, worst: int | None = 8,
             iterations: int = 1000, lam: float = 0.01, lr: float = 0.01, min_rows: float = 8.0,
             target: str = "local", batch: int = 8, threads: int = 1) -> tuple[Any, dict]:
    """Copy of QDQ model ``qdq`` (onnx ModelProto, quantized from the FP32 graph ``fp32``) with learned
    rounding (see the module text) for the int8 weights of ``nodes`` (Conv/Gemm node names), or, when
    ``nodes`` is None, of the ``worst`` layers by relative output error of nearest rounding on
    ``calibration`` (None: every layer). Returns the model and a summary: per layer the output error of
    nearest and of learned rounding relative to the layer's output power (calibration data), the share
    of weights rounded the other way, and the output channels that kept nearest rounding. Layers with
    fewer than ``min_rows`` sampled input rows per weight of an output (``K``) are left alone
    (``skipped``): with too few rows the learned rounding fits the calibration samples, not the layer
    (EfficientNet-Lite0's classifier, 98 rows for K = 1280, fell from 80.8% to 36.5% agreement)."""
    import onnx
    from onnx import numpy_helper

    if target not in ("local", "fp32"):
        raise ValueError(f"target must be local or fp32, not {target!r}")
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    layers = [ly for ly in quant_layers(fp32, model) if nodes is None or ly.node in nodes]
    stats = layer_stats(fp32, model, calibration, layers, batch=batch, threads=threads)
    if target == "local":  # E[((w~ - w) x_q)^2]: the FP32 weights on the QDQ model's inputs
        stats = {k: replace(st, gram_qf=st.gram_qq, gram_ff=st.gram_qq) for k, st in stats.items()}
    inits = initializers(model)
    fp_inits = initializers(fp32)
    fp_nodes = {n.name: n for n in fp32.graph.node}
    prepared, skipped = [], []
    for ly in layers:
        st = stats[ly.node]
        if st.rows < min_rows * st.gram_qq.shape[-1]:
            skipped.append(ly.node)
            continue
        w_fp = weight_matrix(ly, numpy_helper.to_array(fp_inits[fp_nodes[ly.node].input[1]]).astype(np.float64))
        w_int_t = numpy_helper.to_array(inits[ly.weight])
        w_int = weight_matrix(ly, w_int_t.astype(np.float64))
        scale = numpy_helper.to_array(inits[ly.scale]).astype(np.float64).reshape(-1)
        scale = np.broadcast_to(scale if scale.size > 1 else scale[0], (w_int.shape[0] * w_int.shape[1],))
        scale = scale.reshape(w_int.shape[:2])
        power = np.einsum("gok,gok->go", np.matmul(w_fp, st.gram_ff), w_fp)
        err = output_error(st, w_fp, w_int * scale[..., None])
        prepared.append((float(err.sum() / max(power.sum(), 1e-30)), ly, st, w_fp, w_int, w_int_t, scale, power))
    if nodes is None and worst is not None:
        prepared = sorted(prepared, key=lambda p: -p[0])[:worst]
    summary: dict[str, Any] = {"layers": {}, "iterations": iterations, "lam": lam, "target": target,
                               "skipped": skipped}
    for rel0, ly, st, w_fp, w_int, w_int_t, scale, power in prepared:
        bound = int(np.abs(w_int).max())
        learned = learn_rounding(w_fp, scale, st.gram_qq, st.gram_qf, qmin=-bound, qmax=bound,
                                 iterations=iterations, lam=lam, lr=lr)
        err_near = output_error(st, w_fp, w_int * scale[..., None])
        err_new = output_error(st, w_fp, learned * scale[..., None])
        better = err_new < err_near
        chosen = np.where(better[..., None], learned, w_int)
        err = np.where(better, err_new, err_near)
        new_t = from_weight_matrix(ly, chosen, w_int_t.shape).astype(w_int_t.dtype)
        inits[ly.weight].CopyFrom(numpy_helper.from_array(new_t, ly.weight))
        summary["layers"][ly.node] = {
            "error_nearest": round(rel0, 7), "error_learned": round(float(err.sum() / max(power.sum(), 1e-30)), 7),
            "flipped": round(float(np.mean(chosen != w_int)), 4),
            "channels_kept_nearest": int((~better).sum()), "channels": int(better.size)}
    return model, summary
