"""The ``toolchain quantize`` job as data: the last step of the quantize flow, tying the others together.

A :class:`QuantizeJob` holds what the command's flags ask for; :func:`run_quantize` resolves the target
(its preset and execution providers), loads the calibration and evaluation data, quantizes (plainly,
with the accuracy guard of :mod:`toolchain.quantize.guard`, or choosing among the preset's candidates
with :mod:`toolchain.quantize.auto`), measures FP32 against INT8 (:mod:`toolchain.quantize.measure`)
and returns a JSON-ready report. It never prints; the command renders the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, option
from toolchain.core.fsio import check_output
from toolchain.quantize.auto import auto_quantize
from toolchain.quantize.guard import GuardStep, guard_accuracy
from toolchain.quantize.measure import (
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MIN_COSINE,
    WARMUP,
    budget_text,
    fidelity_text,
    geomean,
    pays_off,
    shortfall,
)
from toolchain.quantize.sensitivity import Ranking
from toolchain.quantize.static import QuantizeResult, file_size, model_type
from toolchain.runtime.timing import conditions
from toolchain.targets.presets import PRESETS, preset, preset_reason


@dataclass(frozen=True)
class QuantizeJob:
    """One ``toolchain quantize`` run; the defaults are the command's.

    ``model``/``output``: the FP32 .onnx file and where the INT8 one goes (an existing one needs
    ``force``). ``calib_data``/``eval_data``: data specs (``.npz``, image folder, ``.txt``, ``builtin:...``,
    ``random``), ``calib_samples``/``eval_samples`` samples of each (without ``eval_data``, evaluation uses
    the samples of ``calib_data`` after the calibration ones). ``target``: a target name or ``.toml`` (its
    preset, and its providers unless ``providers`` is given) or a preset name (default: this machine's
    CPU). ``auto``: measure every candidate of the preset and keep the fastest within budget. ``mode``
    (``static``/``dynamic``) and ``activations`` (``uint8``/``int8``) default to the preset's; ``fmt``
    (``qdq``/``qoperator``), ``weights``, ``per_channel``, ``reduce_range``, ``calibration``
    (``minmax``/``entropy``/``percentile``), ``adaround``, ``bias_correction`` (static QDQ remedies fitted
    on the calibration set, :mod:`toolchain.quantize.remedies`) and ``exclude`` (node names kept in FP32)
    as in :class:`~toolchain.targets.presets.QuantConfig`.
    ``max_accuracy_drop`` (points) and ``min_cosine`` (0 to 1) are the accuracy budget the guard always
    holds the INT8 model to (1 and 0.99 when unset: ``DEFAULT_MAX_ACCURACY_DROP`` and
    ``DEFAULT_MIN_COSINE`` of :mod:`toolchain.quantize.measure`). ``batch_sizes`` and ``runs``: timing of
    FP32 against INT8 (interleaved runs per model and batch size); ``providers``: execution providers to time on (empty: the target's, else
    ``cpu``). ``seq_len`` (tokens), ``tokenizer`` (directory), ``image_size`` (H, W in pixels) and
    ``mean``/``std`` (per channel) shape the samples. ``calib_batch``: samples per calibration batch;
    ``chunk``: at most this many intermediate outputs held at once; ``fuse``: ORT's transformer fusions.
    ``threads``: ONNX Runtime intra-op threads for the measurements and the guard's ranking (None: ORT's
    default, every core).
    """

    model: str
    output: str
    calib_data: str | None = None
    eval_data: str | None = None
    calib_samples: int = 128
    eval_samples: int = 256
    target: str | None = None
    auto: bool = False
    mode: str | None = None
    fmt: str = "qdq"
    activations: str | None = None
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration: str = "minmax"
    adaround: bool = False
    bias_correction: bool = False
    exclude: tuple[str, ...] = ()
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    batch_sizes: tuple[int, ...] = (1, 8)
    runs: int = 20
    providers: tuple[str, ...] = ()
    seq_len: int = 128
    tokenizer: str | None = None
    text_field: str = "text"  # CSV column / JSON Lines key of a labelled text file
    label_field: str = "label"
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    calib_batch: int = 8
    chunk: int | None = None
    fuse: bool = True
    force: bool = False
    threads: int | None = None


class BudgetError(ToolchainError):
    """The INT8 model misses the accuracy budget even with the guard's FP32 fallbacks: nothing was
    written. The message names the budget and the best fidelity reached; ``report`` is what
    :func:`run_quantize` would have returned (``failed`` true, ``output`` None)."""

    def __init__(self, message: str, report: dict[str, Any], *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.report = report


def resolve_target(target: str | None, providers: tuple[str, ...] = ()) -> tuple[str | None, tuple[str, ...]]:
    """The quantization preset name and execution providers of ``target`` (a preset name, a target name
    or a target ``.toml``; None: this machine's default preset). ``providers``, when given, win over the
    target's; the fallback is ``("cpu",)``. Every provider must be usable here (checked before any work:
    a model written and then not timable helps nobody)."""

    preset_name = target
    if target and target not in PRESETS:  # a target: its preset, and where it runs
        from toolchain.targets.target import builtin_names, load_target

        try:
            loaded = load_target(target)
        except ToolchainError as exc:
            if target.endswith(".toml") or "/" in target:
                raise
            raise ToolchainError(f"unknown target or quantization preset {target!r}",
                                 hint=f"targets: {', '.join(builtin_names())}; presets: {', '.join(PRESETS)}; "
                                      "or a path to a target .toml") from exc
        preset_name = loaded.quant_preset
        providers = providers or tuple(loaded.provider_names())
    providers = providers or ("cpu",)
    _check_providers(providers)
    return preset_name, providers


def _check_providers(providers: tuple[str, ...]) -> None:
    from toolchain.runtime.session import provider_name, provider_statuses

    statuses = {s.name: s for s in provider_statuses()}
    for p in providers:
        name = provider_name(p)
        status_ = statuses.get(name)
        if status_ is None or not status_.usable:
            why = status_.reason if status_ else "this onnxruntime build does not include it"
            raise ToolchainError(f"execution provider {name} is not usable here: {why}",
                                 hint="`toolchain doctor` lists the providers that work here")


def run_quantize(job: QuantizeJob, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """What ``toolchain quantize`` does, as data: resolve the target, load the data, quantize (always
    held to the accuracy budget by the guard, or ``auto``), measure FP32 against INT8, and return a
    JSON-ready report: ``model``,
    ``output`` (the file written, or None), ``preset``, ``batches``, ``providers``, ``notes``, ``failed``,
    ``calibration``/``evaluation`` (the data used), ``rows`` (one per model measured: ``label``,
    ``config``, ``latency`` by batch size as ``{median_ms, mean_ms, std_ms, p10_ms, p90_ms, ci95_ms,
    runs}``, ``speedup`` against FP32, ``fidelity``, ``size_bytes``, ``meets_budget``, ``reason``),
    ``chosen`` and ``recommendation``, ``timing`` (the conditions of every latency figure:
    ``threads`` actually used, ``spinning`` (false: the alternated sessions do not spin), ``cpu`` with its
    ``model`` and INT8-relevant ``flags``, ``runs``, ``warmup``; :func:`toolchain.runtime.timing.conditions`);
    plus ``quantization`` (what was written), ``guard`` (every try of the accuracy guard:
    :func:`guard_entries`), ``guard_selection`` (the data the guard decided keep or undo on, never the
    reported evaluation data unless it has one sample: ``data``, ``source``, ``samples``, ``split``,
    ``evaluation_samples``, ``biased``; when ``split``, ``evaluation`` names the reported part and its
    ``selection_samples``) and ``sensitivity`` (its ranking: :func:`ranking_entry`) where they apply. ``progress`` receives one line of text before each long step
    (loading data, calibration, each guard step, each ``auto`` candidate).

    An INT8 model that misses the budget is never written: when the guard's FP32 fallbacks cannot bring
    it within budget (or, with ``auto``, no candidate can), nothing is written and :class:`BudgetError`
    (exit code 2) names the budget that failed and the best fidelity reached."""
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset

    say = progress or (lambda _text: None)
    preset_name, resolved = resolve_target(job.target, job.providers)
    model, output, batches, providers = job.model, job.output, job.batch_sizes, list(resolved)
    if not Path(model).is_file():
        raise ToolchainError(f"{model}: no such ONNX file")
    check_output(output, force=job.force, inputs=(model,))
    chosen = preset(preset_name)
    transformer = model_type(model) is not None
    base = chosen.transformer if transformer else chosen.static
    config = replace(base, mode=job.mode or base.mode, fmt=job.fmt,
                     activations=job.activations or base.activations, weights=job.weights, per_channel=job.per_channel,
                     reduce_range=job.reduce_range or base.reduce_range, calibration=job.calibration,
                     adaround=job.adaround, bias_correction=job.bias_correction, exclude=tuple(job.exclude))
    config.validate()
    opts = DataOptions(seq_len=job.seq_len, tokenizer=job.tokenizer, text_field=job.text_field,
                       label_field=job.label_field, mean=job.mean, std=job.std,
                       image_size=job.image_size)
    needs_calib = job.auto or config.mode == "static"
    calib_set = eval_set = None
    if job.calib_data:
        say(f"loading calibration data ({job.calib_data})")
        extra = 0 if job.eval_data else job.eval_samples
        pool = load_dataset(job.calib_data, model, replace(opts, samples=job.calib_samples + extra))
        calib_set = pool.take(0, job.calib_samples)
        if not job.eval_data and len(pool) > job.calib_samples:
            eval_set = pool.take(job.calib_samples, None)
    elif needs_calib and not job.auto:
        raise ToolchainError(f"static quantization needs {option('--calib DATA', 'calib_data')}", hint="or use " + option("--mode dynamic", "mode='dynamic'"))
    if job.eval_data:
        say(f"loading evaluation data ({job.eval_data})")
        eval_set = load_dataset(job.eval_data, model, replace(opts, samples=job.eval_samples))
    notes = []
    if eval_set is None:
        eval_set = calib_set if calib_set is not None else load_dataset("random", model, replace(opts, samples=16))
        notes.append(f"fidelity measured on {eval_set.source}, not on held-out data: pass " + option("--eval DATA", "eval_data"))
    if eval_set.synthetic:
        notes.append("evaluation data is synthetic (random inputs): fidelity says little about real accuracy")
    if eval_set.subset_of and eval_set.labels is not None:
        notes.append(f"{eval_set.source} is a subset of {eval_set.subset_of}: its accuracy is no held-out "
                     "figure for a model trained on that set (INT8 against FP32 fidelity still holds)")
    budget = DEFAULT_MAX_ACCURACY_DROP if job.max_accuracy_drop is None else job.max_accuracy_drop
    min_cosine = DEFAULT_MIN_COSINE if job.min_cosine is None else job.min_cosine
    timing = dict(batches=batches, providers=providers, runs=job.runs, threads=job.threads)

    reason = preset_reason(chosen.name, job.target if job.target and job.target not in PRESETS else None)
    notes.insert(0, reason)
    report: dict[str, Any] = {"model": model, "output": None, "preset": chosen.name, "preset_reason": reason,
                              "batches": list(batches),
                              "providers": providers, "notes": notes, "failed": False,
                              "calibration": None if calib_set is None else {"source": calib_set.source,
                                                                              "samples": len(calib_set),
                                                                              "sha256": calib_set.sha256},
                              "evaluation": {"source": eval_set.source, "samples": len(eval_set),
                                             "subset_of": eval_set.subset_of},
                              "timing": conditions(job.threads, runs=job.runs, warmup=WARMUP)}
    if job.auto:
        result = auto_quantize(model, output, calib_set, eval_set, preset_name=chosen.name, max_accuracy_drop=budget,
                               min_cosine=min_cosine, force=job.force, calib_batch=job.calib_batch, progress=say,
                               **timing)
        report["rows"] = [_row(c.label, c.config, c.latency, c.speedup, c.fidelity, c.size_bytes, c.meets_budget, c.reason)
                          for c in result.candidates]
        if result.guard:
            report["guard"] = guard_entries(model, result.guard)
            _selection_entry(report, result.guard_selection, len(result.guard) > 1)
        report.update(output=result.output, chosen=result.chosen, recommendation=result.recommendation)
        if result.missed_budget:
            report.update(failed=True, recommendation=result.missed_budget)
            raise BudgetError(result.missed_budget, report, hint=_loosen_hint())
        return report
    ranked: list = []
    selected: dict[str, Any] = {}
    result, steps = guard_accuracy(model, output, config, calib_set, eval_set, max_accuracy_drop=budget,
                                   min_cosine=min_cosine, force=job.force, preset_name=chosen.name,
                                   calib_batch=job.calib_batch, fuse=job.fuse, chunk=job.chunk, progress=say,
                                   ranked=ranked, selected=selected, **timing)
    if selected["split"]:  # every figure below is on the reported part
        report["evaluation"].update(samples=selected["evaluation_samples"], selection_samples=selected["samples"])
    _selection_entry(report, selected, len(steps) > 1)
    fp32_size = file_size(Path(model))
    first = steps[0]
    report["rows"] = [_row("FP32", None, first.fp32_latency, {b: 1.0 for b in batches}, first.fp32_fidelity,
                           fp32_size, True, "")]
    for step in steps:
        label = config.label + (f" ({len(step.excluded)} nodes FP32{'' if step.kept else ', undone'})"
                                if step.excluded else "")
        report["rows"].append(_row(label, None, step.latency, step.speedup, step.fidelity, None,
                                   step.meets_budget, step.reason))
    report["guard"] = guard_entries(model, steps)
    if ranked:
        report["sensitivity"] = ranking_entry(model, ranked[0])
    kept = [s for s in steps if s.kept][-1]
    if result is None:
        best = min(steps, key=lambda s: shortfall(s.fidelity))
        fallback = f" even with {len(kept.excluded)} nodes kept in FP32" if kept.excluded else ""
        message = (f"INT8 misses the accuracy budget {budget_text(best.fidelity, budget, min_cosine)}{fallback}: "
                   f"the best reached {fidelity_text(best.fidelity)}"
                   + (f" ({len(best.excluded)} nodes in FP32)" if best.excluded else "")
                   + f"; nothing written to {output}")
        report.update(failed=True, recommendation=message)
        raise BudgetError(message, report, hint=_loosen_hint())
    if kept.excluded:
        notes.append("kept in FP32: " + ", ".join(_with_modules(model, kept.excluded)))
    report.update(output=result.path, chosen=result.label,
                  recommendation=f"wrote {result.path}; {_verdict(kept.speedup)}", quantization=asdict(result))
    return _fill_sizes(report, result)


def _selection_entry(report: dict[str, Any], selected: dict[str, Any] | None, tried: bool) -> None:
    """The report's ``guard_selection`` (what the guard decided keep or undo on:
    :func:`~toolchain.quantize.guard.selection_sets`) and, when it tried fallbacks, a note saying so."""
    if not selected:
        return
    report["guard_selection"] = dict(selected)
    if not tried:
        return
    if selected["biased"]:
        report["notes"].append("the guard chose its FP32 fallbacks on the evaluation set itself (one sample): "
                               "the fidelity reported is optimistic")
    elif selected["split"]:
        report["notes"].append(f"the guard chose its FP32 fallbacks on the first {selected['samples']} evaluation "
                               f"samples and reports fidelity on the other {selected['evaluation_samples']}: pass "
                               + option("--calib DATA", "calib_data") + " to choose on calibration data instead")
    else:
        report["notes"].append(f"the guard chose its FP32 fallbacks on the {selected['samples']} calibration samples; "
                               f"fidelity is reported on the {selected['evaluation_samples']} evaluation samples")


def _loosen_hint() -> str:
    return ("loosen it with " + option("--max-accuracy-drop", "max_accuracy_drop") + " or "
            + option("--min-cosine", "min_cosine") + ", or calibrate on more representative data")


def _verdict(speedup: dict) -> str:
    gm = geomean(list(speedup.values()))
    return (f"INT8 runs {gm:.2f}x FP32 speed here (geometric mean over batch sizes)" if pays_off(speedup) else
            f"INT8 is not faster here ({gm:.2f}x FP32 speed): consider keeping FP32 (try " + option("--auto", "auto=True") + ")")


def _modules(model_path: str, nodes: list[str]) -> list[str | None]:
    """The PyTorch module of each node name the model's node-to-module map can resolve (``model`` for the
    model itself), else None."""
    import onnx

    from toolchain.formats.nodemap import NodeModuleMap

    node_map = NodeModuleMap.from_model(onnx.load(model_path, load_external_data=False))
    found = [node_map.resolve(name) if node_map else None for name in nodes]
    return [(f.module or "model") if f else None for f in found]


def _with_modules(model_path: str, nodes: list[str]) -> list[str]:
    """``node (module)`` for each node name the model's node-to-module map can resolve."""
    return [f"{n} ({m})" if m else n for n, m in zip(nodes, _modules(model_path, nodes), strict=True)]


def guard_entries(model_path: str, steps: list[GuardStep]) -> list[dict[str, Any]]:
    """The report's ``guard``: per try, ``excluded``, ``speedup``, ``meets_budget`` and ``step`` (0: plain
    INT8), ``added`` (nodes) with their ``added_modules`` (PyTorch module or None), ``kept`` (false:
    undone, it did not improve fidelity), ``fidelity_before``/``fidelity`` (:class:`Fidelity` fields),
    ``shortfall_before``/``shortfall`` (the measure the budget judges, lower is better), ``gain``
    (shortfall before minus after), ``ms_lost`` (measured: median against the kept model's in the same
    interleaved runs, by batch size), ``estimated_ms_lost`` (multiply-accumulate share estimate) and
    ``estimated_gain`` (output error energy the ranking expected to take away). These fidelities are on the
    evaluation set; ``selection_fidelity_before``/``selection_fidelity``, what keep or undo was decided on,
    are on the report's ``guard_selection`` data (None where not measured: every one when no fallback was
    tried, and the one before step 0)."""
    entries = []
    for i, s in enumerate(steps):
        before = s.fidelity_before
        entries.append({"step": i, "excluded": s.excluded, "speedup": s.speedup, "meets_budget": s.meets_budget,
                        "added": s.added, "added_modules": _modules(model_path, s.added) if s.added else [],
                        "kept": s.kept, "fidelity_before": asdict(before) if before else None,
                        "fidelity": asdict(s.fidelity), "shortfall_before": shortfall(before) if before else None,
                        "shortfall": shortfall(s.fidelity), "gain": s.gain,
                        "ms_lost": {str(b): v for b, v in s.ms_lost.items()},
                        "estimated_ms_lost": {str(b): v for b, v in s.estimated_ms_lost.items()},
                        "estimated_gain": s.estimated_gain,
                        "selection_fidelity_before": asdict(s.selection_before) if s.selection_before else None,
                        "selection_fidelity": asdict(s.selection_fidelity) if s.selection_fidelity else None})
    return entries


def ranking_entry(model_path: str, ranking: Ranking, top: int = 20) -> dict[str, Any]:
    """The report's ``sensitivity``: how the guard ranked what to keep in FP32. ``simulated_error`` and
    ``simulated_fidelity``: the INT8 model simulated on the FP32 graph against FP32 on ``samples`` probe
    samples (relative output error energy; it should be close to the real INT8 model's); ``units``, the
    ``top`` best by ``ratio`` (error taken away per share of the multiply-accumulates): ``nodes``,
    ``modules``, ``error_removed``, ``mac_share`` (an estimate of the time share), ``ratio``."""
    units = [{"nodes": list(f.nodes), "modules": _modules(model_path, list(f.nodes)), "error_removed": f.gain,
              "mac_share": f.share, "ratio": f.ratio} for f in ranking.fallbacks[:top]]
    return {"simulated_error": ranking.error, "simulated_fidelity": asdict(ranking.fidelity) if ranking.fidelity else None,
            "samples": ranking.samples, "units": units}


def _row(label, config, latency, speedup, fid, size, ok, reason) -> dict[str, Any]:
    return {"label": label, "config": config,
            "latency": {str(b): v for b, v in latency.items()} if latency else None,
            "speedup": {str(b): v for b, v in speedup.items()},
            "fidelity": asdict(fid) if fid else None, "size_bytes": size, "meets_budget": ok, "reason": reason}


def _fill_sizes(report: dict[str, Any], result: QuantizeResult) -> dict[str, Any]:
    report["rows"][-1]["size_bytes"] = result.size_int8_bytes  # the step that was written
    return report
