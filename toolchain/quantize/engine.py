"""ONNX Runtime INT8 quantization with target presets, measured candidates and an accuracy guard.

Calibration is separable from quantization (as in Optimum): :func:`load_dataset` gives the samples,
:class:`QuantConfig` says how to quantize, :func:`quantize_model` writes one INT8 model, and
:func:`evaluate` / :func:`auto_quantize` measure speed and fidelity on the target.

Defaults decide whether INT8 pays off (see ``../shared/DESIGN.md``): U8S8 QDQ (uint8 activations, int8
weights, per-channel) on x86, S8S8 on ARM and for TensorRT with symmetric activations, dynamic INT8 for
transformers on CPU. Presets carry those defaults; ``--auto`` measures the candidates on the actual
machine and keeps the fastest that meets the accuracy budget, or recommends keeping FP32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import __version__
from toolchain.core.errors import ToolchainError, one_line
from toolchain.core.fsio import atomic_dir, captured_output, check_output, commit_files, sha256_file
from toolchain.core.onnxfile import model_metadata, set_metadata
from toolchain.data.dataset import Dataset
from toolchain.runtime.outputs import Fidelity, fidelity, is_classifier, pooled, run_outputs
from toolchain.targets.presets import QuantConfig, preset

log = logging.getLogger(__name__)

QUANT_KEY = "toolchain.quantization"
# transformers model types ORT's transformer optimizer knows, keyed by config.model_type
TRANSFORMER_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "vit": "vit", "gpt2": "gpt2"}


def model_type(onnx_path: str | Path) -> str | None:
    """The ORT transformer-optimizer type (``bert``, ``vit``, ``gpt2``) of a model exported from a
    transformers model of a kind it knows (``toolchain.model_type`` in the metadata), else None."""
    return TRANSFORMER_TYPES.get(model_metadata(onnx_path).get("toolchain.model_type", ""))


# ---------------------------------------------------------------------------------------------- quantize


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` wrote."""

    path: str
    config: dict[str, Any]
    label: str
    fused: str | None
    calibration: dict[str, Any] | None
    size_fp32_bytes: int
    size_int8_bytes: int
    seconds: float

    @property
    def size_ratio(self) -> float:
        return self.size_int8_bytes / self.size_fp32_bytes


class _Reader:
    """An ORT ``CalibrationDataReader`` over a :class:`Dataset`, ``batch`` samples a call."""

    def __init__(self, data: Dataset, batch: int):
        self._batches = data.batches(batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self):  # ORT >= 1.17 may iterate
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _file_size(path: Path) -> int:
    """Size of an ONNX file plus the external data files it references."""
    import onnx

    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return size + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def quantize_model(model_path: str | Path, output: str | Path, config: QuantConfig, calibration: Dataset | None = None,
                   *, calib_batch: int = 8, fuse: bool = True, force: bool = False, preset_name: str | None = None,
                   chunk: int | None = None, keep_preprocessed: str | Path | None = None) -> QuantizeResult:
    """Quantize the FP32 ONNX model at ``model_path`` to ``output``.

    Static mode needs ``calibration`` (samples fed ``calib_batch`` at a time; ``chunk`` bounds how many
    intermediate outputs MinMax calibration holds in memory). With ``fuse``, transformer models first
    get ONNX Runtime's transformer fusions (attention, layer norm, GELU). ``keep_preprocessed`` receives
    a copy of the FP32 graph that was quantized (node names to exclude refer to it). The output keeps the input's
    metadata (provenance, node-to-module map) and adds ``toolchain.quantization``. Written atomically;
    an existing output needs ``force``.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    config.validate()
    src = Path(model_path)
    if not src.is_file():
        raise ToolchainError(f"{model_path}: no such ONNX file")
    final = check_output(output, force=force, inputs=(str(src),))
    if config.mode == "static" and (calibration is None or len(calibration) == 0):
        raise ToolchainError("static quantization needs calibration data, and the calibration set is empty",
                             hint="pass --calib DATA, or use --mode dynamic")
    started = time.perf_counter()
    kind = model_type(src) if fuse else None
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with atomic_dir(final) as scratch:
        with captured_output():  # ORT's quantizer and calibrators print progress on stdout
            current = src
            if kind:
                current = _fuse_transformer(src, kind, scratch / "fused.onnx")
            pre = scratch / "pre.onnx"
            try:
                # ORT's symbolic shape inference dumps sym_shape_infer_temp.onnx + <uuid>.data into the
                # working directory when it gives up: keep that litter inside the scratch directory.
                with contextlib.chdir(scratch):
                    quant_pre_process(str(Path(current).resolve()), str(pre.resolve()),
                                      skip_symbolic_shape=kind is not None)
            except Exception as exc:  # pre-processing helps, it is not required
                log.warning("quant_pre_process failed (%s); quantizing the model as it is", one_line(exc))
                shutil.copyfile(current, pre)
            if keep_preprocessed:
                shutil.copyfile(pre, keep_preprocessed)
            out = scratch / final.name
            try:
                if config.mode == "dynamic":
                    quantize_dynamic(str(pre), str(out), per_channel=config.per_channel, reduce_range=config.reduce_range,
                                     op_types_to_quantize=list(config.op_types) if config.op_types else None,
                                     weight_type=qtype[config.weights], nodes_to_exclude=list(config.exclude) or None,
                                     extra_options={"MatMulConstBOnly": True})
                else:
                    extra: dict[str, Any] = {"ActivationSymmetric": config.symmetric_activations,
                                             "WeightSymmetric": True,
                                             # activation x activation MatMuls (attention scores) lose too much
                                             "MatMulConstBOnly": kind is not None}
                    if config.calibration == "percentile":
                        extra["CalibPercentile"] = config.percentile
                    if chunk:
                        extra["CalibMaxIntermediateOutputs"] = chunk
                    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[config.calibration]
                    # histogram calibrators stack per-batch arrays, so their batches must all have one size
                    batch = calib_batch if config.calibration == "minmax" else 1
                    # on transformers, static quantization of anything but weight MatMuls wrecks the output
                    # (MiniLM: cosine 0.30 with every op, 0.94 with MatMuls only); dynamic is the better mode
                    op_types = config.op_types or (("MatMul",) if kind else None)
                    quantize_static(str(pre), str(out), _Reader(calibration, batch),
                                    op_types_to_quantize=list(op_types) if op_types else None,
                                    quant_format=QuantFormat.QDQ if config.fmt == "qdq" else QuantFormat.QOperator,
                                    per_channel=config.per_channel, reduce_range=config.reduce_range,
                                    activation_type=qtype[config.activations], weight_type=qtype[config.weights],
                                    nodes_to_exclude=list(config.exclude) or None, calibrate_method=method,
                                    extra_options=extra)
            except ToolchainError:
                raise
            except Exception as exc:
                raise ToolchainError(f"ONNX Runtime could not quantize {model_path} ({one_line(exc)})") from None
        calib_info = None if calibration is None or config.mode == "dynamic" else {
            "source": calibration.source, "samples": len(calibration), "sha256": calibration.sha256,
            "synthetic": calibration.synthetic, "batch": calib_batch if config.calibration == "minmax" else 1}
        _stamp(out, src, config, calib_info, kind, preset_name, reference=pre)
        for leftover in ("pre.onnx", "fused.onnx"):
            (scratch / leftover).unlink(missing_ok=True)
        for extra_file in scratch.glob("*"):  # calibration scratch ORT may leave behind
            if extra_file.name != final.name and not extra_file.name.startswith(final.name):
                extra_file.unlink() if extra_file.is_file() else shutil.rmtree(extra_file)
        commit_files(scratch, final)
    return QuantizeResult(path=str(final), config=asdict(config), label=config.label, fused=kind,
                          calibration=calib_info, size_fp32_bytes=_file_size(src), size_int8_bytes=_file_size(final),
                          seconds=round(time.perf_counter() - started, 2))


def _fuse_transformer(src: Path, kind: str, dest: Path) -> Path:
    """ORT's transformer fusions (attention, skip layer norm, GELU) on the CPU, keeping metadata."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(str(src), model_type=kind, num_heads=0, hidden_size=0, opt_level=0)
    except Exception as exc:
        log.warning("transformer fusions failed (%s); quantizing without them", one_line(exc))
        return src
    model = optimized.model
    original = onnx.load(str(src), load_external_data=False)
    set_metadata(model, {p.key: p.value for p in original.metadata_props})
    onnx.save(model, str(dest))
    return dest


def _stamp(path: Path, src: Path, config: QuantConfig, calibration: dict | None, fused: str | None,
           preset_name: str | None, reference: Path | None = None) -> None:
    """Compact the quantized model (:func:`compact_qdq`, with ``reference`` the FP32 graph that was
    quantized) and give it the FP32 model's metadata plus :data:`QUANT_KEY`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    original = onnx.load(str(src), load_external_data=False)
    props = {p.key: p.value for p in original.metadata_props}
    import onnxruntime

    # FP32 biases for ORT to quantize at load time: only an onnxruntime that does (>= 1.21) writes them
    float_bias = (_ort_quantizes_float_bias(onnxruntime.__version__) and config.mode == "static"
                  and config.fmt == "qdq" and reference is not None and reference.is_file())
    compaction = compact_qdq(model, onnx.load(str(reference), load_external_data=False) if float_bias else None)
    props[QUANT_KEY] = json.dumps({
        "config": asdict(config), "label": config.label, "preset": preset_name, "calibration": calibration,
        "transformer_fusions": fused, "fp32_sha256": sha256_file(src), "onnxruntime": onnxruntime.__version__,
        "toolchain": __version__, "compaction": compaction}, sort_keys=True)
    set_metadata(model, props)
    onnx.save(model, str(path))


# ---------------------------------------------------------------------------------------------- compaction
#
# What ORT's QDQ quantizer writes beyond the int8 weights, and what compact_qdq does about it (MobileNetV2,
# 17.9k output channels for 3.5M weights, most of them in depthwise convolutions with 9 weights a channel):
# per output channel a float32 weight scale and an int8 weight zero point, and for the bias an int32 copy,
# a float32 scale (input scale x weight scale) and an all-zero int32 zero point: 17 bytes a channel where
# the float32 bias took 4. ORT quantizes a float32 Conv/Gemm bias itself when it loads a QDQ model
# (WeightBiasQuantization, onnxruntime >= 1.21: round(bias / (input scale x weight scale)), zero point 0),
# so a float32 bias gives the same fused QLinearConv/QGemm and int32 bias, at 4 bytes a channel.

_FLOAT_BIAS_OPS = ("Conv", "Gemm")  # those ORT's WeightBiasQuantization handles (ConvTranspose only lately)


def _ort_quantizes_float_bias(version: str) -> bool:
    """Whether onnxruntime ``version`` quantizes float Conv/Gemm biases of QDQ models at load time."""
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
    """Remove, in place, the bytes an ORT-quantized ``model`` carries that change nothing ORT runs:

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


# ---------------------------------------------------------------------------------------------- evaluate


@dataclass
class Candidate:
    """One measured configuration: latency at each batch size, its speed-up against FP32, fidelity."""

    label: str
    config: dict[str, Any] | None
    latency: dict[int, dict[str, Any]]
    speedup: dict[int, float]
    fidelity: Fidelity | None
    size_bytes: int
    meets_budget: bool = True
    reason: str = ""
    path: str | None = None


@dataclass
class AutoResult:
    """The outcome of :func:`auto_quantize`: every candidate (FP32 first) and the choice."""

    candidates: list[Candidate]
    chosen: str | None
    recommendation: str
    output: str | None = None
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MIN_SPEEDUP = 1.05  # below this geometric-mean speed-up, INT8 does not pay for its accuracy risk


def _feeds_for_batch(data: Dataset, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples (repeated when the set is smaller)."""
    reps = -(-batch // len(data))
    return {k: np.concatenate([v] * reps)[:batch] for k, v in data.feeds.items()}


def compare_models(paths: dict[str, str], evaluation: Dataset, *, batches: tuple[int, ...] = (1, 8),
                   providers: list[str] | None = None, runs: int = 20, threads: int | None = None,
                   reference: str | None = None) -> tuple[dict[str, dict[int, Any]], dict[str, Fidelity]]:
    """Latency of every model at each batch size (interleaved runs, medians) and fidelity against
    ``reference`` (default: the first model) on ``evaluation``."""
    from toolchain.runtime.session import create_session
    from toolchain.runtime.timing import interleaved

    sessions = {name: create_session(p, providers, threads=threads) for name, p in paths.items()}
    ref_name = reference or next(iter(paths))
    classifier = is_classifier(paths[ref_name])
    outputs = {name: pooled(run_outputs(s, evaluation), evaluation) for name, s in sessions.items()}
    fids = {name: fidelity(outputs[ref_name], out, evaluation.labels, classifier) for name, out in outputs.items()}
    latency: dict[str, dict[int, Any]] = {name: {} for name in paths}
    for batch in batches:
        feeds = _feeds_for_batch(evaluation, batch)
        stats = interleaved({name: (lambda s=s, f=feeds: s.run(None, f)) for name, s in sessions.items()},
                            warmup=3, runs=runs)
        for name, st in stats.items():
            latency[name][batch] = st
    return latency, fids


def _within_budget(fid: Fidelity, max_drop_points: float, min_cosine: float) -> tuple[bool, str]:
    if fid.accuracy_drop_points is not None:
        ok = fid.accuracy_drop_points <= max_drop_points
        return ok, "" if ok else f"accuracy drop {fid.accuracy_drop_points:.2f} points > {max_drop_points}"
    if fid.agreement is not None:
        ok = 100 * (1 - fid.agreement) <= max_drop_points
        return ok, "" if ok else f"top-1 disagreement {100 * (1 - fid.agreement):.2f}% > {max_drop_points}"
    ok = fid.cosine >= min_cosine
    return ok, "" if ok else f"cosine {fid.cosine:.5f} < {min_cosine}"


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values)))) if values else 0.0


def auto_quantize(model_path: str | Path, output: str | Path, calibration: Dataset | None, evaluation: Dataset, *,
                  preset_name: str | None = None, max_accuracy_drop: float = 1.0, min_cosine: float = 0.99,
                  batches: tuple[int, ...] = (1, 8), providers: list[str] | None = None, runs: int = 20,
                  threads: int | None = None, force: bool = False, calib_batch: int = 8,
                  workdir: str | Path | None = None) -> AutoResult:
    """Quantize with every candidate of the preset, measure each against FP32 on the target, and write
    the fastest one within the accuracy budget to ``output``; when none is at least
    :data:`MIN_SPEEDUP` times faster than FP32, write nothing and recommend keeping FP32.

    The budget is ``max_accuracy_drop`` points of task accuracy when ``evaluation`` has labels, else
    that many percent of top-1 disagreement for classifiers, else ``min_cosine`` of the outputs.
    """
    import tempfile

    chosen_preset = preset(preset_name)
    check_output(output, force=force, inputs=(str(model_path),))
    transformer = model_type(model_path) is not None
    configs = [c for c in chosen_preset.candidates if c.mode == "static" or transformer]
    if calibration is None or len(calibration) == 0:
        configs = [c for c in configs if c.mode == "dynamic"]
        if not configs:
            raise ToolchainError("--auto needs calibration data for static candidates", hint="pass --calib DATA")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = {"FP32": str(model_path)}
        results: dict[str, QuantizeResult] = {}
        for i, cfg in enumerate(configs):
            res = quantize_model(model_path, Path(tmp) / f"candidate{i}.onnx", cfg, calibration, force=True,
                                 calib_batch=calib_batch, preset_name=chosen_preset.name)
            paths[cfg.label] = res.path
            results[cfg.label] = res
        latency, fids = compare_models(paths, evaluation, batches=batches, providers=providers, runs=runs,
                                       threads=threads)
        candidates = []
        for label, path in paths.items():
            speedup = {b: latency["FP32"][b].median / latency[label][b].median for b in batches}
            ok, reason = _within_budget(fids[label], max_accuracy_drop, min_cosine)
            candidates.append(Candidate(label=label, config=results[label].config if label in results else None,
                                        latency={b: latency[label][b].to_dict() for b in batches}, speedup=speedup,
                                        fidelity=fids[label], size_bytes=_file_size(Path(path)),
                                        meets_budget=ok, reason=reason, path=None))
        viable = [c for c in candidates[1:] if c.meets_budget]
        best = max(viable, key=lambda c: geomean(list(c.speedup.values())), default=None)
        if best is None or geomean(list(best.speedup.values())) < MIN_SPEEDUP:
            why = ("no INT8 configuration stays within the accuracy budget" if best is None else
                   f"the fastest INT8 configuration within budget ({best.label}) is only "
                   f"{geomean(list(best.speedup.values())):.2f}x FP32 speed (geometric mean over batch sizes)")
            return AutoResult(candidates, None, f"keep FP32: {why}", None, chosen_preset.name)
        final = check_output(output, force=force, inputs=(str(model_path),))
        with atomic_dir(final) as scratch:
            shutil.copyfile(paths[best.label], scratch / final.name)
            commit_files(scratch, final)
        best.path = str(final)
        rec = f"ship {best.label}: {geomean(list(best.speedup.values())):.2f}x FP32 speed within the accuracy budget"
        return AutoResult(candidates, best.label, rec, str(final), chosen_preset.name)


@dataclass
class GuardStep:
    """One fallback step of :func:`guard_accuracy`: the nodes kept in FP32 so far, the fidelity that
    gave, and the INT8 latency against FP32 (median milliseconds at each batch size)."""

    excluded: list[str]
    fidelity: Fidelity
    speedup: dict[int, float]
    meets_budget: bool
    reason: str
    latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    fp32_latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    fp32_fidelity: Fidelity | None = None


def sensitive_nodes(fp32_preprocessed: str | Path, qdq_path: str | Path, data: Dataset, batch: int = 8) -> list[tuple[str, float]]:
    """Nodes of the FP32 graph ranked from most to least damaged by quantization: ORT's
    ``qdq_loss_debug`` compares each activation of the QDQ model with the FP32 one; the score is the
    signal-to-quantization-noise ratio in dB (lower is worse), attributed to the node producing it."""
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
            fp32_acts = collect_activations(str(aug_fp32), _Reader(data, batch))
            qdq_acts = collect_activations(str(aug_qdq), _Reader(data, batch))
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
    output compared with the float one; the score is the signal-to-quantization-noise ratio in dB."""
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
    ranked = [(name, 10 * np.log10(signal[name] / noise[name]) if noise[name] else float("inf")) for name, _, _ in targets]
    return sorted(ranked, key=lambda kv: kv[1])


def guard_accuracy(model_path: str | Path, output: str | Path, config: QuantConfig, calibration: Dataset | None,
                   evaluation: Dataset, *, max_accuracy_drop: float, min_cosine: float = 0.99, group: int = 2,
                   max_steps: int = 6, batches: tuple[int, ...] = (1, 8), providers: list[str] | None = None,
                   runs: int = 10, force: bool = False, preset_name: str | None = None, calib_batch: int = 8,
                   fuse: bool = True) -> tuple[QuantizeResult | None, list[GuardStep]]:
    """Quantize with ``config``; while the INT8 model misses the accuracy budget, keep the ``group``
    most quantization-sensitive nodes (:func:`sensitive_nodes` for static, :func:`matmul_sensitivity`
    for dynamic quantization) in FP32 and quantize again, up to
    ``max_steps`` times. Every step is measured (fidelity, and latency against FP32) and returned.
    ``output`` is written only when a step meets the budget; otherwise the result is None."""
    import tempfile

    if config.mode == "static" and (calibration is None or len(calibration) == 0):
        raise ToolchainError("static quantization needs calibration data", hint="pass --calib DATA")
    check_output(output, force=force, inputs=(str(model_path),))
    steps: list[GuardStep] = []
    excluded: list[str] = list(config.exclude)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "fp32-pre.onnx"
        ranking: list[tuple[str, float]] | None = None
        for step in range(max_steps + 1):
            cfg = replace(config, exclude=tuple(excluded))
            candidate = Path(tmp) / f"step{step}.onnx"
            result = quantize_model(model_path, candidate, cfg, calibration, force=True, preset_name=preset_name,
                                    keep_preprocessed=pre, calib_batch=calib_batch, fuse=fuse)
            latency, fids = compare_models({"FP32": str(model_path), "INT8": str(candidate)}, evaluation,
                                           batches=batches, providers=providers, runs=runs)
            ok, reason = _within_budget(fids["INT8"], max_accuracy_drop, min_cosine)
            speedup = {b: latency["FP32"][b].median / latency["INT8"][b].median for b in batches}
            steps.append(GuardStep(list(excluded), fids["INT8"], speedup, ok, reason,
                                   {b: latency["INT8"][b].to_dict() for b in batches},
                                   {b: latency["FP32"][b].to_dict() for b in batches}, fids["FP32"]))
            if ok or step == max_steps:
                break
            if ranking is None:
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
    result.size_int8_bytes = _file_size(final)
    return result, steps


def run_quantize_command(*, model: str, output: str, calib: str | None, eval_: str | None, calib_samples: int,
                         eval_samples: int, preset_name: str | None, auto: bool, mode: str | None, fmt: str,
                         activations: str | None, weights: str, per_channel: bool, reduce_range: bool,
                         calibration: str, max_accuracy_drop: float | None, min_cosine: float | None,
                         batches: tuple[int, ...], runs: int, providers: list[str], seq_len: int,
                         tokenizer: str | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                         chunk: int | None, fuse: bool, force: bool, image_size: tuple[int, int] | None = None,
                         calib_batch: int = 8) -> dict[str, Any]:
    """What ``toolchain quantize`` does, as data: load the data, quantize (plain, guarded or ``auto``),
    measure FP32 against INT8, and return a JSON-ready report (``rows``: one per model measured)."""
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset

    if not Path(model).is_file():
        raise ToolchainError(f"{model}: no such ONNX file")
    check_output(output, force=force, inputs=(model,))
    chosen = preset(preset_name)
    transformer = model_type(model) is not None
    base = chosen.transformer if transformer else chosen.static
    config = replace(base, mode=mode or base.mode, fmt=fmt, activations=activations or base.activations,
                     weights=weights, per_channel=per_channel, reduce_range=reduce_range or base.reduce_range,
                     calibration=calibration)
    opts = DataOptions(seq_len=seq_len, tokenizer=tokenizer, mean=mean, std=std, image_size=image_size)
    needs_calib = auto or config.mode == "static"
    calib_set = eval_set = None
    if calib:
        pool = load_dataset(calib, model, replace(opts, samples=calib_samples + (0 if eval_ else eval_samples)))
        calib_set = pool.take(0, calib_samples)
        if not eval_ and len(pool) > calib_samples:
            eval_set = pool.take(calib_samples, None)
    elif needs_calib and not auto:
        raise ToolchainError("static quantization needs --calib DATA", hint="or use --mode dynamic")
    if eval_:
        eval_set = load_dataset(eval_, model, replace(opts, samples=eval_samples))
    notes = []
    if eval_set is None:
        eval_set = calib_set if calib_set is not None else load_dataset("random", model, replace(opts, samples=16))
        notes.append(f"fidelity measured on {eval_set.source}, not on held-out data: pass --eval DATA")
    if eval_set.synthetic:
        notes.append("evaluation data is synthetic (random inputs): fidelity says little about real accuracy")
    budget = max_accuracy_drop if max_accuracy_drop is not None else 1.0
    guarded = max_accuracy_drop is not None or min_cosine is not None
    min_cosine = 0.99 if min_cosine is None else min_cosine

    report: dict[str, Any] = {"model": model, "output": None, "preset": chosen.name, "batches": list(batches),
                              "providers": providers, "notes": notes, "failed": False,
                              "calibration": None if calib_set is None else {"source": calib_set.source,
                                                                              "samples": len(calib_set),
                                                                              "sha256": calib_set.sha256},
                              "evaluation": {"source": eval_set.source, "samples": len(eval_set)}}
    if auto:
        result = auto_quantize(model, output, calib_set, eval_set, preset_name=chosen.name, max_accuracy_drop=budget,
                               min_cosine=min_cosine, batches=batches, providers=providers, runs=runs, force=force,
                               calib_batch=calib_batch)
        report["rows"] = [_row(c.label, c.config, c.latency, c.speedup, c.fidelity, c.size_bytes, c.meets_budget, c.reason)
                          for c in result.candidates]
        report.update(output=result.output, chosen=result.chosen, recommendation=result.recommendation)
        return report
    if guarded:
        result, steps = guard_accuracy(model, output, config, calib_set, eval_set, max_accuracy_drop=budget,
                                       min_cosine=min_cosine, batches=batches, providers=providers, runs=runs,
                                       force=force, preset_name=chosen.name, calib_batch=calib_batch, fuse=fuse)
        fp32_size = _file_size(Path(model))
        first = steps[0]
        report["rows"] = [_row("FP32", None, first.fp32_latency, {b: 1.0 for b in batches}, first.fp32_fidelity,
                               fp32_size, True, "")]
        for step in steps:
            label = config.label + (f" ({len(step.excluded)} nodes FP32)" if step.excluded else "")
            report["rows"].append(_row(label, None, step.latency, step.speedup, step.fidelity, None,
                                       step.meets_budget, step.reason))
        report["guard"] = [{"excluded": s.excluded, "speedup": s.speedup, "meets_budget": s.meets_budget} for s in steps]
        if result is None:
            report.update(failed=True, recommendation=f"the accuracy budget of {budget} points was not met even with "
                          f"{len(steps[-1].excluded)} nodes kept in FP32; nothing written")
            return report
        if steps[-1].excluded:
            notes.append("kept in FP32: " + ", ".join(_with_modules(model, steps[-1].excluded)))
        report.update(output=result.path, chosen=result.label,
                      recommendation=f"wrote {result.path}; {_verdict(steps[-1].speedup)}", quantization=asdict(result))
        return _fill_sizes(report, result)
    result = quantize_model(model, output, config, calib_set, force=force, preset_name=chosen.name, fuse=fuse, chunk=chunk,
                            calib_batch=calib_batch)
    latency, fids = compare_models({"FP32": model, config.label: result.path}, eval_set, batches=batches,
                                   providers=providers, runs=runs)
    rows = []
    for label, size in (("FP32", result.size_fp32_bytes), (config.label, result.size_int8_bytes)):
        speedup = {b: latency["FP32"][b].median / latency[label][b].median for b in batches}
        ok, reason = _within_budget(fids[label], budget, min_cosine)
        rows.append(_row(label, None, {b: latency[label][b].to_dict() for b in batches}, speedup, fids[label], size,
                         ok, reason))
    report["rows"] = rows
    report.update(output=result.path, chosen=config.label,
                  recommendation=f"wrote {result.path}; {_verdict(rows[1]['speedup'])}", quantization=asdict(result))
    return report


def _verdict(speedup: dict) -> str:
    gm = geomean(list(speedup.values()))
    return (f"INT8 runs {gm:.2f}x FP32 speed here (geometric mean over batch sizes)" if gm >= MIN_SPEEDUP else
            f"INT8 is not faster here ({gm:.2f}x FP32 speed): consider keeping FP32 (try --auto)")


def _with_modules(model_path: str, nodes: list[str]) -> list[str]:
    """``node (module)`` for each node name the model's node-to-module map can resolve."""
    import onnx

    from toolchain.formats.nodemap import NodeModuleMap

    node_map = NodeModuleMap.from_model(onnx.load(model_path, load_external_data=False))
    out = []
    for name in nodes:
        found = node_map.resolve(name) if node_map else None
        out.append(f"{name} ({found.module or 'model'})" if found else name)
    return out


def _row(label, config, latency, speedup, fid, size, ok, reason) -> dict[str, Any]:
    return {"label": label, "config": config,
            "latency": {str(b): v for b, v in latency.items()} if latency else None,
            "speedup": {str(b): v for b, v in speedup.items()},
            "fidelity": asdict(fid) if fid else None, "size_bytes": size, "meets_budget": ok, "reason": reason}


def _fill_sizes(report: dict[str, Any], result: QuantizeResult) -> dict[str, Any]:
    report["rows"][-1]["size_bytes"] = result.size_int8_bytes  # the step that was written
    return report
