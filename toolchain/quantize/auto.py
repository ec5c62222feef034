"""``--auto``: quantize with every candidate configuration of a preset, measure them all against FP32
on this machine (:func:`toolchain.quantize.measure.speed_and_fidelity`) and keep the fastest within the
accuracy budget, or recommend keeping FP32 when INT8 does not pay off here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, option
from toolchain.core.fsio import atomic_dir, check_output, commit_files
from toolchain.data.dataset import Dataset
from toolchain.quantize.guard import GuardStep, guard_accuracy
from toolchain.quantize.measure import (
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MIN_COSINE,
    budget_text,
    fidelity_text,
    geomean,
    pays_off,
    shortfall,
    speed_and_fidelity,
    within_budget,
)
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
    """The outcome of :func:`auto_quantize`: every candidate (FP32 first, then the preset's, then the
    accuracy guard's steps on the fastest one when none met the budget), the label ``chosen`` (None:
    keep FP32), a one-line ``recommendation``, the file written (``output``, None when nothing was), the
    preset's name, the ``guard`` steps (empty when the guard did not run) and ``missed_budget``: None, or
    the one line saying which budget no configuration met (even with FP32 fallbacks) and the best
    fidelity reached; ``guard_selection``: the data the guard decided keep or undo on
    (:func:`~toolchain.quantize.guard.selection_sets`; None when the guard did not run)."""

    candidates: list[Candidate]
    chosen: str | None
    recommendation: str
    output: str | None = None
    preset: str = ""
    guard: list[GuardStep] = field(default_factory=list)
    missed_budget: str | None = None
    guard_selection: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auto_quantize(model_path: str | Path, output: str | Path, calibration: Dataset | None, evaluation: Dataset, *,
                  preset_name: str | None = None, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
                  min_cosine: float = DEFAULT_MIN_COSINE, batches: tuple[int, ...] = (1, 8),
                  providers: list[str] | None = None, runs: int = 20, threads: int | None = None, force: bool = False,
                  calib_batch: int = 8, workdir: str | Path | None = None, guard: bool = True,
                  progress: Callable[[str], None] | None = None) -> AutoResult:
    """Quantize with every candidate of the preset, measure each against FP32 on the target, and write
    the fastest one within the accuracy budget to ``output``; when none is at least
    :data:`~toolchain.quantize.measure.MIN_SPEEDUP` times faster than FP32 (geometric mean over
    ``batches``), write nothing and recommend keeping FP32.

    The budget is ``max_accuracy_drop`` points of task accuracy when ``evaluation`` has labels, else
    that many percent of top-1 disagreement for classifiers, else ``min_cosine`` of the outputs.
    ``batches`` are the batch sizes timed, ``runs`` the interleaved runs per model and batch size;
    ``workdir`` holds the candidates while they are measured (default: the system's temporary directory).

    When no candidate meets the budget and ``guard`` is set, the accuracy guard
    (:func:`~toolchain.quantize.guard.guard_accuracy`) runs on the fastest candidate, keeping its most
    sensitive nodes in FP32; if that meets the budget it is judged like any other candidate, else
    nothing is written and ``missed_budget`` says why. ``progress`` receives one line of text before
    each long step (each candidate, the measurement, each guard step).
    """
    import tempfile

    say = progress or (lambda _text: None)

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
            where = f"candidate {i + 1}/{len(configs)} ({cfg.label})"
            say(where)
            res = quantize_model(model_path, Path(tmp) / f"candidate{i}.onnx", cfg, calibration, force=True,
                                 calib_batch=calib_batch, preset_name=chosen_preset.name,
                                 progress=lambda text, w=where: say(f"{w}: {text}"))
            paths[cfg.label] = res.path
            results[cfg.label] = res
        say(f"measuring {len(configs)} candidates against FP32 (interleaved runs)")
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
        steps: list[GuardStep] = []
        selected: dict[str, Any] = {}
        viable = [c for c in candidates[1:] if c.meets_budget]
        if not viable and guard and len(candidates) > 1:
            fastest = max(candidates[1:], key=lambda c: geomean(list(c.speedup.values())))
            cfg = next(c for c in configs if c.label == fastest.label)
            guarded_path = Path(tmp) / "guarded.onnx"
            res, steps = guard_accuracy(model_path, guarded_path, cfg, calibration, evaluation,
                                        max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, batches=batches,
                                        providers=providers, runs=runs, force=True, preset_name=chosen_preset.name,
                                        calib_batch=calib_batch, threads=threads, selected=selected,
                                        progress=lambda text: say(f"guard on {fastest.label}: {text}"))
            for step in steps[1:] if len(steps) > 1 else steps:
                undone = "" if step.kept else ", undone"
                candidates.append(Candidate(label=f"{cfg.label} ({len(step.excluded)} nodes FP32{undone})",
                                            config=asdict(replace(cfg, exclude=tuple(step.excluded))),
                                            latency=step.latency, speedup=step.speedup, fidelity=step.fidelity,
                                            size_bytes=file_size(guarded_path) if res and step is steps[-1] else 0,
                                            meets_budget=step.meets_budget, reason=step.reason))
            if res is not None:
                paths[candidates[-1].label] = str(guarded_path)
                viable = [candidates[-1]]
        best = max(viable, key=lambda c: geomean(list(c.speedup.values())), default=None)
        if best is None:
            measured = [c for c in candidates[1:] if c.fidelity is not None]
            closest = min(measured, key=lambda c: shortfall(c.fidelity), default=None)
            missed = None
            if closest is not None:
                kept = len([s for s in steps if s.kept][-1].excluded) if steps else 0
                fallback = f" even with {kept} nodes kept in FP32" if kept else ""
                missed = (f"no INT8 configuration meets the accuracy budget "
                          f"{budget_text(closest.fidelity, max_accuracy_drop, min_cosine)}{fallback}: the best reached "
                          f"{fidelity_text(closest.fidelity)} ({closest.label}); nothing written to {output}")
            return AutoResult(candidates, None, "keep FP32: no INT8 configuration stays within the accuracy budget",
                              None, chosen_preset.name, steps, missed, selected or None)
        if not pays_off(best.speedup):
            why = (f"the fastest INT8 configuration within budget ({best.label}) is only "
                   f"{geomean(list(best.speedup.values())):.2f}x FP32 speed (geometric mean over batch sizes)")
            return AutoResult(candidates, None, f"keep FP32: {why}", None, chosen_preset.name, steps,
                              guard_selection=selected or None)
        final = check_output(output, force=force, inputs=(str(model_path),))
        with atomic_dir(final) as scratch:
            shutil.copyfile(paths[best.label], scratch / final.name)
            commit_files(scratch, final)
        best.path = str(final)
        rec = f"ship {best.label}: {geomean(list(best.speedup.values())):.2f}x FP32 speed within the accuracy budget"
        return AutoResult(candidates, best.label, rec, str(final), chosen_preset.name, steps,
                          guard_selection=selected or None)
