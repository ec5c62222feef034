"""``--auto``: quantize with every candidate configuration of a preset, measure them all against FP32
on this machine (:func:`toolchain.quantize.measure.speed_and_fidelity`) and keep the fastest within the
accuracy budget, or recommend keeping FP32 when INT8 does not pay off here.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, option
from toolchain.core.fsio import atomic_dir, check_output, commit_files
from toolchain.data.dataset import Dataset
from toolchain.quantize.measure import geomean, pays_off, speed_and_fidelity, within_budget
from toolchain.quantize.static import QuantizeResult, file_size, model_type, quantize_model
from toolchain.runtime.outputs import Fidelity
from toolchain.targets.presets import preset


@dataclass
class Candidate:
    """One measured configuration: ``latency`` at each batch size (``{median_ms, mean_ms, std_ms, p10_ms,
    p90_ms, ci95_ms, runs}``), its ``speedup`` against FP32 (FP32 median / this median), fidelity against
    FP32, file size in bytes, and whether it meets the accuracy budget (else ``reason``)."""

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
    """The outcome of :func:`auto_quantize`: every candidate (FP32 first), the label ``chosen`` (None:
    keep FP32), a one-line ``recommendation``, the file written (``output``, None when nothing was) and
    the preset's name."""

    candidates: list[Candidate]
    chosen: str | None
    recommendation: str
    output: str | None = None
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auto_quantize(model_path: str | Path, output: str | Path, calibration: Dataset | None, evaluation: Dataset, *,
                  preset_name: str | None = None, max_accuracy_drop: float = 1.0, min_cosine: float = 0.99,
                  batches: tuple[int, ...] = (1, 8), providers: list[str] | None = None, runs: int = 20,
                  threads: int | None = None, force: bool = False, calib_batch: int = 8,
                  workdir: str | Path | None = None) -> AutoResult:
    """Quantize with every candidate of the preset, measure each against FP32 on the target, and write
    the fastest one within the accuracy budget to ``output``; when none is at least
    :data:`~toolchain.quantize.measure.MIN_SPEEDUP` times faster than FP32 (geometric mean over
    ``batches``), write nothing and recommend keeping FP32.

    The budget is ``max_accuracy_drop`` points of task accuracy when ``evaluation`` has labels, else
    that many percent of top-1 disagreement for classifiers, else ``min_cosine`` of the outputs.
    ``batches`` are the batch sizes timed, ``runs`` the interleaved runs per model and batch size;
    ``workdir`` holds the candidates while they are measured (default: the system's temporary directory).
    """
    import tempfile

    chosen_preset = preset(preset_name)
    check_output(output, force=force, inputs=(str(model_path),))
    transformer = model_type(model_path) is not None
    configs = [c for c in chosen_preset.candidates if c.mode == "static" or transformer]
    if calibration is None or len(calibration) == 0:
        configs = [c for c in configs if c.mode == "dynamic"]
        if not configs:
            raise ToolchainError(f"{option('--auto', 'auto_quantize')} needs calibration data for static candidates", hint=f"pass {option('--calib DATA', 'calibration')}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = {"FP32": str(model_path)}
        results: dict[str, QuantizeResult] = {}
        for i, cfg in enumerate(configs):
            res = quantize_model(model_path, Path(tmp) / f"candidate{i}.onnx", cfg, calibration, force=True,
                                 calib_batch=calib_batch, preset_name=chosen_preset.name)
            paths[cfg.label] = res.path
            results[cfg.label] = res
        latency, fids = speed_and_fidelity(paths, evaluation, batches=batches, providers=providers, runs=runs,
                                       threads=threads)
        candidates = []
        for label, path in paths.items():
            speedup = {b: latency["FP32"][b].median / latency[label][b].median for b in batches}
            ok, reason = within_budget(fids[label], max_accuracy_drop, min_cosine)
            candidates.append(Candidate(label=label, config=results[label].config if label in results else None,
                                        latency={b: latency[label][b].to_latency_dict() for b in batches},
                                        speedup=speedup, fidelity=fids[label], size_bytes=file_size(Path(path)),
                                        meets_budget=ok, reason=reason, path=None))
        viable = [c for c in candidates[1:] if c.meets_budget]
        best = max(viable, key=lambda c: geomean(list(c.speedup.values())), default=None)
        if best is None or not pays_off(best.speedup):
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

