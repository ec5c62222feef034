"""The accuracy guard: quantize, measure against FP32, and while the INT8 model misses the accuracy
budget keep in FP32 the nodes that buy the most fidelity per millisecond, and quantize again.

Nodes are ranked by :func:`~toolchain.quantize.sensitivity.rank_fallbacks`: the output error each
node's own quantization causes (static: the QDQ model's own scales on the FP32 graph; dynamic: each
weight MatMul), divided by its share of the multiply-accumulates (the estimate of what FP32 costs it).
:func:`guard_accuracy` tries them a group at a time, measures every try (fidelity, and latency
interleaved with FP32 and with the model it would replace), keeps a try only when fidelity improves
on the selection set (:func:`selection_sets`: not the evaluation set whose fidelity is reported, so the
figures reported are not the ones the choices were fitted to) and records every try, kept or undone.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError, option
from toolchain.core.fsio import atomic_dir, check_output, commit_files
from toolchain.data.dataset import Dataset
from toolchain.quantize.measure import improves, outputs_of, shortfall, speed_and_fidelity, within_budget
from toolchain.quantize.sensitivity import Fallback, Ranking, rank_fallbacks
from toolchain.quantize.static import QuantizeResult, file_size, quantize_model
from toolchain.runtime.outputs import Fidelity, fidelity, is_classifier
from toolchain.targets.presets import QuantConfig

RANK_SAMPLES = 16  # probe samples (of the selection data) the ranking runs every simulated model on


@dataclass
class GuardStep:
    """One try of :func:`guard_accuracy`: the nodes in FP32 in the model tried (``excluded``; ``added``
    by this try), the fidelity that gave, the speed-up against FP32 (FP32 median / INT8 median, by batch
    size) and whether it meets the budget (else ``reason``); ``latency`` and ``fp32_latency`` by batch
    size are ``{median_ms, mean_ms, std_ms, p10_ms, p90_ms, ci95_ms, runs}``, ``fp32_fidelity`` FP32
    against itself (its accuracy); these fidelities are on the evaluation set. ``kept``: false when the
    try's ``selection_fidelity`` (on the selection set, :func:`selection_sets`) did not improve on
    ``selection_before`` (the model kept so far) and was undone; ``fidelity_before`` is the kept model's
    on the evaluation set. ``ms_lost``: this model's median minus the kept model's,
    measured in the same interleaved runs, by batch size; ``estimated_ms_lost`` what the ranking expected
    (the added nodes' share of the multiply-accumulates times FP32's median minus the first INT8 model's);
    ``estimated_gain``: the output error energy the ranking expected the added nodes to take away."""

    excluded: list[str]
    fidelity: Fidelity
    speedup: dict[int, float]
    meets_budget: bool
    reason: str
    latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    fp32_latency: dict[int, dict[str, Any]] = field(default_factory=dict)
    fp32_fidelity: Fidelity | None = None
    added: list[str] = field(default_factory=list)
    kept: bool = True
    fidelity_before: Fidelity | None = None
    ms_lost: dict[int, float] = field(default_factory=dict)
    estimated_ms_lost: dict[int, float] = field(default_factory=dict)
    estimated_gain: float | None = None
    selection_fidelity: Fidelity | None = None
    selection_before: Fidelity | None = None

    @property
    def gain(self) -> float | None:
        """How much closer to FP32 this try came on the measure the budget judges (positive: better):
        the shortfall before minus the shortfall after (:func:`~toolchain.quantize.measure.shortfall`)."""
        if self.fidelity_before is None:
            return None
        return shortfall(self.fidelity_before) - shortfall(self.fidelity)


def sensitive_nodes(fp32_preprocessed: str | Path, qdq_path: str | Path, data: Dataset,
                    threads: int | None = 1) -> list[tuple[str, float]]:
    """Quantized nodes of a static QDQ model ranked from most to least harmful: the score is the
    signal-to-quantization-noise ratio (dB) of the FP32 model's output with only that node's own
    quantization applied (:func:`~toolchain.quantize.sensitivity.rank_fallbacks`, on ``data``); lower
    is worse, ``inf`` for a node whose quantization changes nothing. ``fp32_preprocessed`` is the FP32
    graph that was quantized (``keep_preprocessed``). Returns ``[(node name, dB)]``, worst first."""
    return _by_db(rank_fallbacks(fp32_preprocessed, data, qdq_path=qdq_path, threads=threads))


def matmul_sensitivity(fp32_preprocessed: str | Path, data: Dataset, *, per_channel: bool = True,
                       reduce_range: bool = False, weights: str = "int8",
                       threads: int | None = 1) -> list[tuple[str, float]]:
    """MatMul nodes with constant weights ranked from most to least damaged by dynamic INT8: the score is
    the output's signal-to-quantization-noise ratio (dB) with only that MatMul quantized as ORT's dynamic
    quantization does (uint8 activations per batch, int8 symmetric weights per column, or per tensor),
    measured on ``data``. Returns ``[(node name, dB)]``, worst first (``inf`` without noise)."""
    dynamic = {"per_channel": per_channel, "reduce_range": reduce_range, "weights": weights}
    return _by_db(rank_fallbacks(fp32_preprocessed, data, dynamic=dynamic, threads=threads))


def _by_db(ranking: Ranking) -> list[tuple[str, float]]:
    scores = [(f.nodes[0], -10 * np.log10(f.gain) if f.gain > 0 else float("inf"))
              for f in ranking.fallbacks if len(f.nodes) == 1]
    return sorted(scores, key=lambda kv: kv[1])


def rank_nodes(fp32_preprocessed: Path, qdq_path: Path, probe: Dataset, config: QuantConfig, excluded: list[str],
               threads: int | None, progress: Callable[[str], None]) -> Ranking:
    """The guard's ranking of what to keep in FP32 next (:func:`rank_fallbacks` for ``config``'s mode)."""
    if config.mode == "static":
        return rank_fallbacks(fp32_preprocessed, probe, qdq_path=qdq_path, excluded=tuple(excluded),
                              threads=threads, progress=progress)
    dynamic = {"per_channel": config.per_channel, "reduce_range": config.reduce_range, "weights": config.weights}
    return rank_fallbacks(fp32_preprocessed, probe, dynamic=dynamic, excluded=tuple(excluded), threads=threads,
                          progress=progress)


def selection_sets(calibration: Dataset | None, evaluation: Dataset) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """``(selection, reported, info)``: the data the guard decides keep or undo on, the data whose fidelity
    it reports, and what they are. The selection set is the calibration set when there is one (and it is
    not the evaluation set itself), else the first half of ``evaluation``, the second half being reported;
    an evaluation set of one sample serves both (``info["biased"]``). ``info``: ``data`` (``calibration``
    or ``evaluation``), ``source``, ``samples``, ``split`` (whether ``evaluation`` was split),
    ``evaluation_samples`` (those reported) and ``biased``."""
    if calibration is not None and len(calibration) and calibration.sha256 != evaluation.sha256:
        selection, reported, data = calibration, evaluation, "calibration"
    elif len(evaluation) > 1:
        half = len(evaluation) // 2
        selection, reported, data = evaluation.take(0, half), evaluation.take(half, None), "evaluation"
    else:
        selection, reported, data = evaluation, evaluation, "evaluation"
    return selection, reported, {"data": data, "source": selection.source, "samples": len(selection),
                                 "split": reported is not evaluation, "evaluation_samples": len(reported),
                                 "biased": reported is selection}


def _judge(model_path: str | Path, selection: Dataset, providers: list[str] | None,
           threads: int | None) -> Callable[[Path], Fidelity]:
    """The fidelity on ``selection`` of the model at a path against FP32 (whose outputs are computed once,
    on first use)."""
    reference: dict[str, Any] = {}

    def on_selection(path: Path) -> Fidelity:
        if not reference:
            reference.update(out=outputs_of(str(model_path), selection, providers=providers, threads=threads),
                             classifier=is_classifier(model_path))
        out = outputs_of(str(path), selection, providers=providers, threads=threads)
        return fidelity(reference["out"], out, selection.labels, reference["classifier"])

    return on_selection


def _next_nodes(fallbacks: list[Fallback], excluded: list[str], used: set[int], group: int) -> list[str]:
    """The nodes of the next ``group`` units (by rank) not tried yet that take away some error and add a
    node not in FP32 already; their indices join ``used``."""
    added: list[str] = []
    units = 0
    for i, fb in enumerate(fallbacks):
        if units == group:
            break
        new = [n for n in fb.nodes if n not in excluded and n not in added]
        if i in used or not new or fb.gain <= 0:
            continue
        used.add(i)
        added += new
        units += 1
    return added


def guard_accuracy(model_path: str | Path, output: str | Path, config: QuantConfig, calibration: Dataset | None,
                   evaluation: Dataset, *, max_accuracy_drop: float, min_cosine: float = 0.99, group: int = 2,
                   max_steps: int = 6, batches: tuple[int, ...] = (1, 8), providers: list[str] | None = None,
                   runs: int = 10, force: bool = False, preset_name: str | None = None, calib_batch: int = 8,
                   fuse: bool = True, chunk: int | None = None, threads: int | None = None,
                   progress: Callable[[str], None] | None = None, ranked: list[Ranking] | None = None,
                   selected: dict[str, Any] | None = None) -> tuple[QuantizeResult | None, list[GuardStep]]:
    """Quantize with ``config``; while the INT8 model misses the accuracy budget, keep the next ``group``
    units of the ranking (:func:`rank_nodes`: output error taken away per share of the compute) in FP32
    and quantize again, up to ``max_steps`` tries. Every try is measured: fidelity, and latency
    interleaved with FP32 and with the model kept so far (its milliseconds lost). A try that does not
    improve fidelity on the selection set (:func:`selection_sets`: the calibration set, else half of
    ``evaluation``; :func:`~toolchain.quantize.measure.improves`) is undone and the next units are tried,
    so every kept step improves fidelity there. Every try is returned (``kept`` says which stayed).
    The budget, judged on the evaluation set (the reported part when it was split), is that of
    :func:`~toolchain.quantize.measure.within_budget` (``max_accuracy_drop`` points, else
    ``min_cosine``); ``batches`` are the batch sizes timed, ``runs`` the interleaved runs.
    ``output`` is written only when a step meets the budget; otherwise the result is None. ``progress``
    receives one line of text before each long step (quantizing, measuring, ranking nodes); ``ranked``,
    when given, receives the ranking used, and ``selected`` the selection set's ``info``."""
    import tempfile

    say = progress or (lambda _text: None)

    if config.mode == "static" and (calibration is None or len(calibration) == 0):
        raise ToolchainError("static quantization needs calibration data", hint=f"pass {option('--calib DATA', 'calibration')}")
    check_output(output, force=force, inputs=(str(model_path),))
    selection, evaluation, info = selection_sets(calibration, evaluation)
    if selected is not None:
        selected.update(info)
    on_selection = _judge(model_path, selection, providers, threads)
    steps: list[GuardStep] = []
    excluded: list[str] = list(config.exclude)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "fp32-pre.onnx"
        ranking: Ranking | None = None
        used: set[int] = set()
        kept_path = kept_result = None
        added: list[str] = []
        for step in range(max_steps + 1):
            if step:
                if ranking is None:
                    say(f"over budget ({steps[-1].reason}): ranking what each node's quantization costs the output")
                    probe = selection.take(0, min(len(selection), RANK_SAMPLES))
                    steps[0].selection_fidelity = on_selection(kept_path)
                    ranking = rank_nodes(pre, kept_path, probe, config, excluded, threads,
                                         lambda text: say(f"ranking nodes: {text}"))
                    if ranked is not None:
                        ranked.append(ranking)
                added = _next_nodes(ranking.fallbacks, excluded, used, group)
                if not added:
                    break
            trial = excluded + added if step else excluded
            cfg = replace(config, exclude=tuple(trial))
            candidate = Path(tmp) / f"step{step}.onnx"
            where = f"guard step {step + 1}/{max_steps + 1} ({len(trial)} nodes in FP32)" if step else config.label
            result = quantize_model(model_path, candidate, cfg, calibration, force=True, preset_name=preset_name,
                                    keep_preprocessed=pre if not step else None, calib_batch=calib_batch, fuse=fuse,
                                    chunk=chunk, progress=lambda text, w=where: say(f"{w}: {text}"))
            say(f"{where}: measuring against FP32")
            paths = {"FP32": str(model_path), "INT8": str(candidate)} | ({"kept": str(kept_path)} if step else {})
            latency, fids = speed_and_fidelity(paths, evaluation, batches=batches, providers=providers, runs=runs,
                                               threads=threads)
            fid = fids["INT8"]
            ok, reason = within_budget(fid, max_accuracy_drop, min_cosine)
            this = GuardStep(list(trial), fid, {b: latency["FP32"][b].median / latency["INT8"][b].median for b in batches},
                             ok, reason, {b: latency["INT8"][b].to_latency_dict() for b in batches},
                             {b: latency["FP32"][b].to_latency_dict() for b in batches}, fids["FP32"])
            if step:
                before = steps[0] if not any(s.kept for s in steps[1:]) else [s for s in steps if s.kept][-1]
                share = sum(ranking.shares.get(n, 0.0) for n in added)
                first = steps[0]
                this.added, this.fidelity_before = list(added), before.fidelity
                this.selection_before, this.selection_fidelity = before.selection_fidelity, on_selection(candidate)
                this.kept = improves(this.selection_before, this.selection_fidelity)
                this.ms_lost = {b: latency["INT8"][b].median - latency["kept"][b].median for b in batches}
                this.estimated_ms_lost = {b: share * (first.fp32_latency[b]["median_ms"] - first.latency[b]["median_ms"])
                                          for b in batches}
                this.estimated_gain = sum(fb.gain for fb in ranking.fallbacks if set(fb.nodes) <= set(added)
                                          and len(fb.nodes) == 1)
            steps.append(this)
            if not step or this.kept:
                kept_path, kept_result, excluded = candidate, result, list(trial)
            if this.kept and ok:
                break
        final_step = [s for s in steps if s.kept][-1]
        if not final_step.meets_budget:
            return None, steps
        final = check_output(output, force=force, inputs=(str(model_path),))
        with atomic_dir(final) as scratch:
            shutil.copyfile(kept_path, scratch / final.name)
            commit_files(scratch, final)
    kept_result.path = str(final)
    kept_result.size_int8_bytes = file_size(final)
    return kept_result, steps
