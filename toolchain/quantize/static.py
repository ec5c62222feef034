"""Static and dynamic INT8 quantization of one FP32 ONNX model: the first step of the quantize flow.

:func:`quantize_model` takes a :class:`~toolchain.targets.presets.QuantConfig` and calibration samples
(a :class:`~toolchain.data.dataset.Dataset`, fed to ORT's calibrators by :class:`CalibrationReader`) and
writes one INT8 model: ORT's transformer fusions first for transformer models, then ``quant_pre_process``,
then ``quantize_static`` / ``quantize_dynamic``. The written model is compacted
(:func:`toolchain.quantize.qdq.compact_qdq`) and stamped with the FP32 model's metadata plus
:data:`QUANT_KEY` (configuration, preset, calibration set hash, versions).

Defaults decide whether INT8 pays off (see ``../shared/DESIGN.md``): U8S8 QDQ (uint8 activations, int8
weights, per-channel) on x86, S8S8 on ARM and for TensorRT with symmetric activations, dynamic INT8 for
transformers on CPU. Presets carry those defaults; measuring and choosing among them is
:mod:`toolchain.quantize.measure`, :mod:`toolchain.quantize.auto` and :mod:`toolchain.quantize.guard`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import __version__
from toolchain.core.errors import ToolchainError, one_line, option
from toolchain.core.fsio import atomic_dir, captured_output, check_output, commit_files, sha256_file
from toolchain.core.onnxfile import model_metadata, set_metadata
from toolchain.data.dataset import Dataset
from toolchain.quantize.holdfp32 import hold_in_fp32
from toolchain.quantize.outliers import split_outliers
from toolchain.quantize.qdq import compact_qdq, ort_quantizes_float_bias
from toolchain.quantize.remedies import apply_remedies
from toolchain.quantize.smooth import smooth_model
from toolchain.targets.presets import QuantConfig

log = logging.getLogger(__name__)

QUANT_KEY = "toolchain.quantization"
# transformers model types ORT's transformer optimizer knows, keyed by config.model_type
TRANSFORMER_TYPES = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "vit": "vit", "gpt2": "gpt2"}
# Dynamic INT8 of a transformer with calibration data first moves activation outliers out of the INT8
# path: SmoothQuant (strength 0.5) on MatMuls fed by a layer norm, outlier channels (peak > 6 x the
# median channel's) of the other MatMuls in FP32. MiniLM on 256 drug reviews (AVX2 host, U8U8, which
# has no 16-bit saturation): cosine to PyTorch 0.9932 -> 0.9984, about 3% more latency.
SMOOTH_ALPHA = 0.5
OUTLIER_RATIO = 6.0


def model_type(onnx_path: str | Path) -> str | None:
    """The ORT transformer-optimizer type (``bert``, ``vit``, ``gpt2``) of a model exported from a
    transformers model of a kind it knows (``toolchain.model_type`` in the metadata), else None."""
    return TRANSFORMER_TYPES.get(model_metadata(onnx_path).get("toolchain.model_type", ""))


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` wrote: the INT8 model's ``path``, its configuration (``config``, as
    :func:`dataclasses.asdict` of the :class:`QuantConfig`, and its ``label``), the transformer fusions
    applied (``fused``: ORT model type or None), the calibration set (source, samples, sha256; None when
    none was used), the FP32 and INT8 sizes in bytes (external data included), the wall-clock
    ``seconds`` it took and the outlier transforms applied before quantizing (``transforms``: see
    :func:`migrate_outliers`; None for none)."""

    path: str
    config: dict[str, Any]
    label: str
    fused: str | None
    calibration: dict[str, Any] | None
    size_fp32_bytes: int
    size_int8_bytes: int
    seconds: float
    transforms: dict[str, Any] | None = None

    @property
    def size_ratio(self) -> float:
        """INT8 bytes / FP32 bytes (about 0.25 for int8 weights)."""
        return self.size_int8_bytes / self.size_fp32_bytes


class CalibrationReader:
    """An ORT ``CalibrationDataReader`` over a :class:`Dataset`: each call gives the next ``batch`` samples
    as ``{input name: array of shape (n, ...)}`` with ``n <= batch`` (the last one may be shorter), then
    None when the set is spent."""

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


def file_size(path: Path) -> int:
    """Size in bytes of an ONNX file plus the external data files it references."""
    import onnx

    size = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return size + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def quantize_model(model_path: str | Path, output: str | Path, config: QuantConfig, calibration: Dataset | None = None,
                   *, calib_batch: int = 8, fuse: bool = True, force: bool = False, preset_name: str | None = None,
                   chunk: int | None = None, keep_preprocessed: str | Path | None = None,
                   smooth: bool = True, progress: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantize the FP32 ONNX model at ``model_path`` to ``output``.

    Static mode needs ``calibration`` (samples fed ``calib_batch`` at a time; ``chunk`` bounds how many
    intermediate outputs MinMax calibration holds in memory). With ``fuse``, transformer models first
    get ONNX Runtime's transformer fusions (attention, layer norm, GELU). ``keep_preprocessed`` receives
    a copy of the FP32 graph that was quantized (node names to exclude refer to it); static mode keeps the
    ``config.exclude`` nodes really in FP32 (:func:`~toolchain.quantize.holdfp32.hold_in_fp32`). The output keeps the input's
    metadata (provenance, node-to-module map) and adds ``toolchain.quantization``. Written atomically;
    an existing output needs ``force``. ``calib_batch`` counts samples (histogram calibrators take one
    at a time); ``preset_name`` is only recorded. With ``smooth`` (the default), dynamic quantization of a
    transformer given ``calibration`` first applies :func:`migrate_outliers`. ``progress`` receives one line of text before each
    long step (fusions, pre-processing, calibration). Returns what was written (:class:`QuantizeResult`).
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
                             hint=("pass " + option("--calib DATA", "calibration") + ", or use "
                                   + option("--mode dynamic", "QuantConfig(mode='dynamic')")))
    started = time.perf_counter()
    say = progress or (lambda _text: None)
    kind = model_type(src) if fuse else None
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    with atomic_dir(final) as scratch:
        with captured_output():  # ORT's quantizer and calibrators print progress on stdout
            current = src
            if kind:
                say(f"{kind} transformer fusions")
                current = _fuse_transformer(src, kind, scratch / "fused.onnx")
            pre = scratch / "pre.onnx"
            say("pre-processing the FP32 graph")
            try:
                # ORT's symbolic shape inference dumps sym_shape_infer_temp.onnx + <uuid>.data into the
                # working directory when it gives up: keep that litter inside the scratch directory.
                with contextlib.chdir(scratch):
                    quant_pre_process(str(Path(current).resolve()), str(pre.resolve()),
                                      skip_symbolic_shape=kind is not None)
            except Exception as exc:  # pre-processing helps, it is not required
                log.warning("quant_pre_process failed (%s); quantizing the model as it is", one_line(exc))
                shutil.copyfile(current, pre)
            transforms = None
            if smooth and kind and config.mode == "dynamic" and calibration is not None and len(calibration):
                say(f"moving activation outliers out of INT8 ({len(calibration)} samples)")
                transforms = migrate_outliers(pre, calibration, exclude=config.exclude, batch=calib_batch)
            fp32_nodes = [*config.exclude, *(transforms["fp32_nodes"] if transforms else ())]
            if keep_preprocessed:
                shutil.copyfile(pre, keep_preprocessed)
            out = scratch / final.name
            try:
                if config.mode == "dynamic":
                    say(f"quantizing weights ({config.label})")
                    quantize_dynamic(str(pre), str(out), per_channel=config.per_channel, reduce_range=config.reduce_range,
                                     op_types_to_quantize=list(config.op_types) if config.op_types else None,
                                     weight_type=qtype[config.weights], nodes_to_exclude=fp32_nodes or None,
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
                    say(f"calibrating on {len(calibration)} samples ({config.calibration}) and quantizing")
                    quantize_static(str(pre), str(out), CalibrationReader(calibration, batch),
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
        calib_info = None if calibration is None or (config.mode == "dynamic" and not transforms) else {
            "source": calibration.source, "samples": len(calibration), "sha256": calibration.sha256,
            "synthetic": calibration.synthetic, "batch": calib_batch if config.calibration == "minmax" else 1}
        _stamp(out, src, config, calib_info, kind, preset_name, reference=pre, transforms=transforms)
        if config.mode == "static" and config.exclude:  # else ORT would run them INT8 after all
            hold_in_fp32(out, list(config.exclude))
        if config.adaround or config.bias_correction:
            apply_remedies(out, pre, calibration, adaround=config.adaround, bias_correction=config.bias_correction,
                           quant_key=QUANT_KEY, progress=say)
        for leftover in ("pre.onnx", "fused.onnx"):
            (scratch / leftover).unlink(missing_ok=True)
        for extra_file in scratch.glob("*"):  # calibration scratch ORT may leave behind
            if extra_file.name != final.name and not extra_file.name.startswith(final.name):
                extra_file.unlink() if extra_file.is_file() else shutil.rmtree(extra_file)
        commit_files(scratch, final)
    return QuantizeResult(path=str(final), config=asdict(config), label=config.label, fused=kind,
                          calibration=calib_info, size_fp32_bytes=file_size(src), size_int8_bytes=file_size(final),
                          seconds=round(time.perf_counter() - started, 2), transforms=transforms)


def migrate_outliers(path: Path, calibration: Dataset, *, exclude: tuple[str, ...] = (), batch: int = 8,
                     alpha: float = SMOOTH_ALPHA, ratio: float = OUTLIER_RATIO) -> dict[str, Any] | None:
    """Rewrite the FP32 graph at ``path`` so that dynamic INT8 loses less, keeping its function: SmoothQuant
    (:func:`toolchain.quantize.smooth.smooth_model`, strength ``alpha``) on MatMuls and Attention fed by a
    layer norm, then the outlier input channels (:func:`toolchain.quantize.outliers.split_outliers`, peak
    above ``ratio`` x the median's) of the other MatMuls into FP32 MatMuls. Nodes in ``exclude`` are left
    alone. Returns what was done, with ``fp32_nodes``: the MatMuls that must stay FP32; None, leaving the
    graph as it is, for a graph whose weights live in external data (over 2 GB: rewritten in memory, it
    could not be saved)."""
    import onnx

    if any(t.external_data for t in onnx.load(str(path), load_external_data=False).graph.initializer):
        return None
    model = onnx.load(str(path))
    smoothed = smooth_model(model, calibration, alpha=alpha, exclude=exclude, batch=batch)
    split = split_outliers(model, calibration, ratio=ratio, exclude=(*exclude, *smoothed.nodes), batch=batch)
    onnx.save(model, str(path))
    return {"smoothquant": smoothed.to_dict(), "outliers": split.to_dict(), "fp32_nodes": split.fp32_nodes}


def attention_shape(onnx_path: str | Path) -> tuple[int, int]:
    """``(num_heads, hidden_size)`` recorded by the exporter (``toolchain.attention``), else ``(0, 0)``:
    ORT's optimizer then detects them from constant Reshape shapes, which TorchScript exports lack."""
    try:
        shape = json.loads(model_metadata(onnx_path).get("toolchain.attention", "{}"))
        return int(shape.get("num_heads", 0)), int(shape.get("hidden_size", 0))
    except (ValueError, TypeError, AttributeError):
        return 0, 0


def _fuse_transformer(src: Path, kind: str, dest: Path) -> Path:
    """ORT's transformer fusions (attention, skip layer norm, GELU) on the CPU, keeping metadata."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = attention_shape(src)
    try:
        optimized = optimize_model(str(src), model_type=kind, num_heads=heads, hidden_size=hidden, opt_level=0)
    except Exception as exc:
        log.warning("transformer fusions failed (%s); quantizing without them", one_line(exc))
        return src
    model = optimized.model
    original = onnx.load(str(src), load_external_data=False)
    set_metadata(model, {p.key: p.value for p in original.metadata_props})
    onnx.save(model, str(dest))
    return dest


def _stamp(path: Path, src: Path, config: QuantConfig, calibration: dict | None, fused: str | None,
           preset_name: str | None, reference: Path | None = None, transforms: dict | None = None) -> None:
    """Compact the quantized model (:func:`compact_qdq`, with ``reference`` the FP32 graph that was
    quantized) and give it the FP32 model's metadata plus :data:`QUANT_KEY`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    original = onnx.load(str(src), load_external_data=False)
    props = {p.key: p.value for p in original.metadata_props}
    import onnxruntime

    # FP32 biases for ORT to quantize at load time: only an onnxruntime that does (>= 1.21) writes them
    float_bias = (ort_quantizes_float_bias(onnxruntime.__version__) and config.mode == "static"
                  and config.fmt == "qdq" and reference is not None and reference.is_file())
    compaction = compact_qdq(model, onnx.load(str(reference), load_external_data=False) if float_bias else None)
    props[QUANT_KEY] = json.dumps({
        "config": asdict(config), "label": config.label, "preset": preset_name, "calibration": calibration,
        "transformer_fusions": fused, "fp32_sha256": sha256_file(src), "onnxruntime": onnxruntime.__version__,
        "toolchain": __version__, "compaction": compaction,
        "transforms": {k: v for k, v in transforms.items() if k != "fp32_nodes"} if transforms else None}, sort_keys=True)
    set_metadata(model, props)
    onnx.save(model, str(path))

