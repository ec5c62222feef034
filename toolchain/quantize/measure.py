"""Measuring and judging INT8 against FP32: the third step of the quantize flow.

:func:`speed_and_fidelity` times every model with the one latency timer
(:func:`toolchain.runtime.timing.interleaved`) and measures fidelity against the FP32 reference;
:func:`within_budget` says whether a fidelity meets the accuracy budget, and :func:`pays_off` whether a
speed-up is worth INT8's accuracy risk (:data:`MIN_SPEEDUP`). :mod:`toolchain.quantize.auto`,
:mod:`toolchain.quantize.guard` and :mod:`toolchain.quantize.job` decide with these.
"""

from __future__ import annotations

import numpy as np

from toolchain.core.errors import option
from toolchain.core.stats import Summary
from toolchain.data.dataset import Dataset
from toolchain.runtime.outputs import Fidelity, fidelity, is_classifier, pooled, run_outputs

DEFAULT_MAX_ACCURACY_DROP = 1.0  # points: the budget for classifiers when no --max-accuracy-drop is given
DEFAULT_MIN_COSINE = 0.99  # the budget for models without classes when no --min-cosine is given
MIN_SPEEDUP = 1.05  # below this geometric-mean speed-up, INT8 does not pay for its accuracy risk
WARMUP = 3  # untimed rounds before :func:`speed_and_fidelity`'s interleaved runs, per batch size


def geomean(values: list[float]) -> float:
    """Geometric mean of positive ``values`` (speed-ups over batch sizes); 0.0 for none."""
    return float(np.exp(np.mean(np.log(values)))) if values else 0.0


def pays_off(speedup: dict[int, float]) -> bool:
    """Whether speed-ups against FP32 (FP32 median / INT8 median, by batch size) reach :data:`MIN_SPEEDUP`
    in geometric mean."""
    return geomean(list(speedup.values())) >= MIN_SPEEDUP


def within_budget(fid: Fidelity, max_drop_points: float, min_cosine: float) -> tuple[bool, str]:
    """Whether ``fid`` meets the budget, and why not (``""`` when it does): ``max_drop_points`` points of
    accuracy when there are labels, else that many percent of top-1 disagreement for classifiers, else
    ``min_cosine`` (0 to 1) of the outputs against FP32."""
    if fid.accuracy_drop_points is not None:
        ok = fid.accuracy_drop_points <= max_drop_points
        return ok, "" if ok else f"accuracy drop {fid.accuracy_drop_points:.2f} points > {max_drop_points:g}"
    if fid.agreement is not None:
        ok = 100 * (1 - fid.agreement) <= max_drop_points
        return ok, "" if ok else f"top-1 disagreement {100 * (1 - fid.agreement):.2f} points > {max_drop_points:g}"
    ok = fid.cosine >= min_cosine
    return ok, "" if ok else f"cosine {fid.cosine:.5f} < {min_cosine:g}"


def budget_text(fid: Fidelity, max_drop_points: float, min_cosine: float) -> str:
    """The budget :func:`within_budget` applies to ``fid``, with the option that sets it:
    ``--max-accuracy-drop 1 (accuracy drop <= 1 point)``, ``... (top-1 disagreement <= 1 point)`` or
    ``--min-cosine 0.99 (cosine >= 0.99)``."""
    if fid.accuracy_drop_points is not None or fid.agreement is not None:
        what = "accuracy drop" if fid.accuracy_drop_points is not None else "top-1 disagreement"
        unit = "point" if max_drop_points == 1 else "points"
        return (option(f"--max-accuracy-drop {max_drop_points:g}", f"max_accuracy_drop={max_drop_points:g}")
                + f" ({what} <= {max_drop_points:g} {unit})")
    return option(f"--min-cosine {min_cosine:g}", f"min_cosine={min_cosine:g}") + f" (cosine >= {min_cosine:g})"


def fidelity_text(fid: Fidelity) -> str:
    """The measure of ``fid`` that the budget judges: ``accuracy drop 2.10 points``, ``top-1 disagreement
    3.00 points`` or ``cosine 0.97512``."""
    if fid.accuracy_drop_points is not None:
        return f"accuracy drop {fid.accuracy_drop_points:.2f} points"
    if fid.agreement is not None:
        return f"top-1 disagreement {100 * (1 - fid.agreement):.2f} points"
    return f"cosine {fid.cosine:.5f}"


def shortfall(fid: Fidelity) -> float:
    """How far ``fid`` is from FP32 on the measure the budget judges (lower is better): accuracy drop
    points, else top-1 disagreement points, else ``1 - cosine``."""
    if fid.accuracy_drop_points is not None:
        return float(fid.accuracy_drop_points)
    if fid.agreement is not None:
        return 100 * (1 - fid.agreement)
    return 1 - fid.cosine


def improves(before: Fidelity, after: Fidelity) -> bool:
    """Whether ``after`` is closer to FP32 than ``before``: a lower :func:`shortfall`, or the same and a
    higher cosine (top-1 counts move in whole samples; the cosine says which way the outputs went)."""
    lost_before, lost_after = shortfall(before), shortfall(after)
    if not np.isclose(lost_before, lost_after, rtol=0, atol=1e-9):
        return lost_after < lost_before
    return after.cosine > before.cosine


def _feeds_for_batch(data: Dataset, batch: int) -> dict[str, np.ndarray]:
    """The first ``batch`` samples (repeated when the set is smaller)."""
    reps = -(-batch // len(data))
    return {k: np.concatenate([v] * reps)[:batch] for k, v in data.feeds.items()}


def outputs_of(path: str, data: Dataset, *, providers: list[str] | None = None,
               threads: int | None = None) -> np.ndarray:
    """The outputs :func:`speed_and_fidelity` compares: the model at ``path``'s first output over every
    sample of ``data`` (pooled for token embeddings), without timing."""
    from toolchain.runtime.session import create_session

    return pooled(run_outputs(create_session(path, providers, threads=threads), data), data)


def speed_and_fidelity(paths: dict[str, str], evaluation: Dataset, *, batches: tuple[int, ...] = (1, 8),
                   providers: list[str] | None = None, runs: int = 20, threads: int | None = None,
                   reference: str | None = None) -> tuple[dict[str, dict[int, Summary]], dict[str, Fidelity]]:
    """Latency of every model (``paths``: label -> .onnx file) at each batch size, and fidelity against
    ``reference`` (a label; default: the first model) on ``evaluation``.

    Returns ``(latency, fidelity)``: ``latency[label][batch]`` is a :class:`~toolchain.core.stats.Summary`
    in milliseconds per run (``.median``, ``.p10``, ``.p90``...) of ``runs`` interleaved runs after
    :data:`WARMUP` warm-up rounds (:func:`toolchain.runtime.timing.interleaved`), every session created
    with ``alternating=True`` (thread-pool spinning off: an idle session's spinning workers would slow the
    one being timed); ``fidelity[label]`` compares that model's outputs on all of ``evaluation`` with
    the reference's. :func:`toolchain.runtime.timing.conditions` states the conditions of these figures.
    """
    from toolchain.runtime.session import create_session
    from toolchain.runtime.timing import interleaved

    sessions = {name: create_session(p, providers, threads=threads, alternating=True) for name, p in paths.items()}
    ref_name = reference or next(iter(paths))
    classifier = is_classifier(paths[ref_name])
    outputs = {name: pooled(run_outputs(s, evaluation), evaluation) for name, s in sessions.items()}
    fids = {name: fidelity(outputs[ref_name], out, evaluation.labels, classifier) for name, out in outputs.items()}
    latency: dict[str, dict[int, Summary]] = {name: {} for name in paths}
    for batch in batches:
        feeds = _feeds_for_batch(evaluation, batch)
        stats = interleaved({name: (lambda s=s, f=feeds: s.run(None, f)) for name, s in sessions.items()},
                            warmup=WARMUP, runs=runs)
        for name, st in stats.items():
            latency[name][batch] = st
    return latency, fids
