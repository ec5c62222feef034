"""The accuracy guard: quantize, measure against FP32, and while the INT8 model misses the accuracy
budget keep the most quantization-sensitive nodes in FP32 and quantize again.

Sensitivity is ranked by :func:`sensitive_nodes` (static quantization: ORT's ``qdq_loss_debug``
activation errors) or :func:`matmul_sensitivity` (dynamic quantization: each weight MatMul's output
error under simulated dynamic INT8); :func:`guard_accuracy` runs the loop and records every step.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError, option
from toolchain.core.fsio import atomic_dir, captured_output, check_output, commit_files
from toolchain.data.dataset import Dataset
from toolchain.quantize.measure import speed_and_fidelity, within_budget
from toolchain.quantize.static import CalibrationReader, QuantizeResult, file_size, quantize_model
from toolchain.runtime.outputs import Fidelity
from toolchain.targets.presets import QuantConfig


@dataclass
class GuardStep:
    """One fallback step of :func:`guard_accuracy`: the nodes kept in FP32 so far, the fidelity that
    gave, the speed-up against FP32 (FP32 median / INT8 median, by batch size) and whether it meets the
    budget (else ``reason``); ``latency`` and ``fp32_latency`` by batch size are ``{median_ms, mean_ms,
    std_ms, p10_ms, p90_ms, ci95_ms, runs}``, ``fp32_fidelity`` FP32 against itself (its accuracy)."""

    excluded: list[str]
    fidelity: Fidelity
    speedup: dict[int, float]
    meets_budget: bool
    reason: str
    latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    fp32_latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    fp32_fidelity: Fidelity | None = None


def sensitive_nodes(fp32_preprocessed: str | Path, qdq_path: str | Path, data: Dataset,
                    batch: int = 8) -> list[tuple[str, float]]:
    """Nodes of the FP32 graph ranked from most to least damaged by quantization: ORT's
    ``qdq_loss_debug`` compares each activation of the QDQ model with the FP32 one; the score is the
    signal-to-quantization-noise ratio in dB (lower is worse), attributed to the node producing it.
    ``fp32_preprocessed`` is the FP32 graph that was quantized (``keep_preprocessed`` of
    :func:`~toolchain.quantize.static.quantize_model`); ``data`` is fed ``batch`` samples at a time.
    Returns ``[(node name, dB)]``, worst first."""
    import tempfile

    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as tmp:
        aug_fp32, aug_qdq = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(fp32_preprocessed), str(aug_fp32))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_qdq))
        with captured_output():
            fp32_acts = collect_activations(str(aug_fp32), CalibrationReader(data, batch))
            qdq_acts = collect_activations(str(aug_qdq), CalibrationReader(data, batch))
    errors = compute_activation_error(create_activation_matching(qdq_acts, fp32_acts))
    producer = {t: n.name for n in onnx.load(str(fp32_preprocessed), load_external_data=False).graph.node
                for t in n.output}
    ranked: dict[str, float] = {}
    for tensor, err in errors.items():
        score = err.get("xmodel_err")
        node = producer.get(tensor)
        if node is not None and score is not None and np.isfinite(score):
            ranked[node] = min(score, ranked.get(node, float("inf")))
    return sorted(ranked.items(), key=lambda kv: kv[1])


def matmul_sensitivity(fp32_preprocessed: str | Path, data: Dataset, batch: int = 8) -> list[tuple[str, float]]:
    """MatMul nodes with constant weights ranked from most to least damaged by dynamic INT8: each one's
    input activations (from ``data``) and weights are quantized as ORT's dynamic quantization does
    (uint8 asymmetric per-tensor activations for every batch, int8 symmetric per-column weights) and its
    output compared with the float one; the score is the signal-to-quantization-noise ratio in dB.
    Returns ``[(node name, dB)]``, worst first (``inf`` for a MatMul without quantization noise)."""
    import onnx
    from onnx import numpy_helper

    from toolchain.runtime.session import create_session

    model = onnx.load(str(fp32_preprocessed))
    weights = {i.name: i for i in model.graph.initializer}
    targets = [(n.name, n.input[0], numpy_helper.to_array(weights[n.input[1]]).astype(np.float64))
               for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
               and len(weights[n.input[1]].dims) == 2]
    if not targets:
        return []
    known = {o.name for o in model.graph.output}
    for tensor in {a for _, a, _ in targets} - known:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = create_session(model.SerializeToString(), ["cpu"], optimization="disable")
    names = [o.name for o in session.get_outputs()]
    signal = {name: 0.0 for name, _, _ in targets}
    noise = {name: 0.0 for name, _, _ in targets}
    for feeds in data.batches(batch):
        values = dict(zip(names, session.run(names, feeds), strict=True))
        for name, tensor, w in targets:
            a = values[tensor].astype(np.float64).reshape(-1, w.shape[0])
            lo, hi = min(a.min(), 0.0), max(a.max(), 0.0)
            scale = (hi - lo) / 255 or 1.0
            zero = np.round(-lo / scale)
            aq = (np.clip(np.round(a / scale) + zero, 0, 255) - zero) * scale
            wscale = np.abs(w).max(axis=0) / 127
            wscale[wscale == 0] = 1.0
            wq = np.clip(np.round(w / wscale), -127, 127) * wscale
            ref = a @ w
            signal[name] += float((ref ** 2).sum())
            noise[name] += float(((ref - aq @ wq) ** 2).sum())
    ranked = [(name, 10 * np.log10(signal[name] / noise[name]) if noise[name] else float("inf"))
              for name, _, _ in targets]
    return sorted(ranked, key=lambda kv: kv[1])


def guard_accuracy(model_path: str | Path, output: str | Path, config: QuantConfig, calibration: Dataset | None,
                   evaluation: Dataset, *, max_accuracy_drop: float, min_cosine: float = 0.99, group: int = 2,
                   max_steps: int = 6, batches: tuple[int, ...] = (1, 8), providers: list[str] | None = None,
                   runs: int = 10, force: bool = False, preset_name: str | None = None, calib_batch: int = 8,
                   fuse: bool = True, chunk: int | None = None, threads: int | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[QuantizeResult | None, list[GuardStep]]:
    """Quantize with ``config``; while the INT8 model misses the accuracy budget, keep the ``group``
    most quantization-sensitive nodes (:func:`sensitive_nodes` for static, :func:`matmul_sensitivity`
    for dynamic quantization) in FP32 and quantize again, up to
    ``max_steps`` times. Every step is measured (fidelity, and latency against FP32) and returned.
    The budget is that of :func:`~toolchain.quantize.measure.within_budget` (``max_accuracy_drop``
    points, else ``min_cosine``); ``batches`` are the batch sizes timed, ``runs`` the interleaved runs.
    ``output`` is written only when a step meets the budget; otherwise the result is None. ``progress``
    receives one line of text before each long step (quantizing, measuring, ranking nodes)."""
    import tempfile

    say = progress or (lambda _text: None)

    if config.mode == "static" and (calibration is None or len(calibration) == 0):
        raise ToolchainError("static quantization needs calibration data", hint=f"pass {option('--calib DATA', 'calibration')}")
    check_output(output, force=force, inputs=(str(model_path),))
    steps: list[GuardStep] = []
    excluded: list[str] = list(config.exclude)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "fp32-pre.onnx"
        ranking: list[tuple[str, float]] | None = None
        for step in range(max_steps + 1):
            cfg = replace(config, exclude=tuple(excluded))
            candidate = Path(tmp) / f"step{step}.onnx"
            where = f"guard step {step + 1}/{max_steps + 1} ({len(excluded)} nodes in FP32)" if step else config.label
            result = quantize_model(model_path, candidate, cfg, calibration, force=True, preset_name=preset_name,
                                    keep_preprocessed=pre, calib_batch=calib_batch, fuse=fuse, chunk=chunk,
                                    progress=lambda text, w=where: say(f"{w}: {text}"))
            say(f"{where}: measuring against FP32")
            latency, fids = speed_and_fidelity({"FP32": str(model_path), "INT8": str(candidate)}, evaluation,
                                           batches=batches, providers=providers, runs=runs, threads=threads)
            ok, reason = within_budget(fids["INT8"], max_accuracy_drop, min_cosine)
            speedup = {b: latency["FP32"][b].median / latency["INT8"][b].median for b in batches}
            steps.append(GuardStep(list(excluded), fids["INT8"], speedup, ok, reason,
                                   {b: latency["INT8"][b].to_latency_dict() for b in batches},
                                   {b: latency["FP32"][b].to_latency_dict() for b in batches}, fids["FP32"]))
            if ok or step == max_steps:
                break
            if ranking is None:
                say(f"over budget ({reason}): ranking the nodes most sensitive to quantization")
                probe = calibration if calibration is not None and len(calibration) else evaluation
                probe = probe.take(0, min(len(probe), 32))
                ranking = (sensitive_nodes(pre, candidate, probe) if config.mode == "static"
                           else matmul_sensitivity(pre, probe))
            remaining = [n for n, _ in ranking if n not in excluded]
            if not remaining:
                break
            excluded += remaining[:group]
        if not steps[-1].meets_budget:
            return None, steps
        final = check_output(output, force=force, inputs=(str(model_path),))
        with atomic_dir(final) as scratch:
            shutil.copyfile(candidate, scratch / final.name)
            commit_files(scratch, final)
    result.path = str(final)
    result.size_int8_bytes = file_size(final)
    return result, steps

