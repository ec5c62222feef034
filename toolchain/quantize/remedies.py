"""Post-training remedies applied to a static QDQ model after calibration, on request
(``QuantConfig.adaround``, ``QuantConfig.bias_correction``; ``--adaround``, ``--bias-correction``):

* learned rounding of the int8 weights (AdaRound, Nagel et al. 2020: :func:`~toolchain.quantize.adaround.adaround`,
  each layer's own rounding error on the calibration samples, kept per output channel only where it beats
  rounding to nearest);
* empirical bias correction (Nagel et al. 2019: :func:`~toolchain.quantize.biascorrect.correct_bias`, the
  mean output shift each layer's weight rounding causes on the calibration samples, folded into its bias).

Both fit on the calibration samples only. Measured on EfficientNet-Lite0 over 266 held-out photo crops
(``benchmarks/remedies_efficientnet.py``, exact int8 arithmetic as VNNI kernels compute it): top-1
agreement with FP32 80.8% plain, 88.7% with bias correction, 89.1% with the first conv in FP32, AdaRound
and bias correction. Cross-layer equalization (:mod:`toolchain.quantize.equalize`) is not applied here:
across ReLU6 it is not an equivalence, and replacing ReLU6 by ReLU wrecks EfficientNet-Lite's FP32
function (11% top-1 agreement with the original).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolchain.core.onnxfile import set_metadata
from toolchain.data.dataset import Dataset


def apply_remedies(qdq_path: Path, fp32_pre: Path, calibration: Dataset, *, adaround: bool, bias_correction: bool,
                   quant_key: str, threads: int = 1, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rewrite the QDQ model at ``qdq_path`` (quantized from the FP32 graph ``fp32_pre``) with the remedies
    asked for, in place, and record what was done under ``remedies`` in its ``quant_key`` metadata entry.
    Returns that record: per remedy the layers changed and the summary the remedy gives."""
    import onnx

    from toolchain.quantize.adaround import adaround as learn
    from toolchain.quantize.biascorrect import correct_bias

    say = progress or (lambda _text: None)
    fp32 = onnx.load(str(fp32_pre))
    model = onnx.load(str(qdq_path))
    done: dict[str, Any] = {"fitted_on": {"source": calibration.source, "samples": len(calibration),
                                          "sha256": calibration.sha256}}
    if adaround:
        say(f"learning the rounding of the int8 weights (AdaRound, {len(calibration)} samples)")
        model, info = learn(fp32, model, calibration, worst=None, threads=threads)
        done["adaround"] = _summary(info)
    if bias_correction:
        say(f"correcting the biases for the weights' rounding ({len(calibration)} samples)")
        model, info = correct_bias(fp32, model, calibration, threads=threads)
        done["bias_correction"] = _summary(info)
    props = {p.key: p.value for p in model.metadata_props}
    record = json.loads(props.get(quant_key, "{}"))
    record["remedies"] = done
    set_metadata(model, {quant_key: json.dumps(record, sort_keys=True)})
    onnx.save(model, str(qdq_path))
    return done


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe scalar and list parts of a remedy's summary (per-layer arrays left out)."""
    keep: dict[str, Any] = {}
    for key, value in info.items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        keep[key] = value
    return keep
