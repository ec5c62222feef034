"""The one latency timer. Every latency the tool reports (quantize, the guard, ``--auto``, the pipeline's
search, profile's energy windows and its profiler pass, compare) is taken here: ``time.perf_counter``
around each call, candidates alternated call by call so that every one sees the same machine state
(thermal, other load), summarised by :class:`toolchain.core.stats.Summary` in milliseconds.

When ONNX Runtime sessions alternate, their sessions must be created with thread-pool spinning off:
``create_session(..., alternating=True)`` (:data:`toolchain.runtime.session.ALTERNATING_CONFIG`,
``session.intra_op.allow_spinning = 0`` and ``session.inter_op.allow_spinning = 0``). On a machine with
few cores the idle session's spinning workers slow the other one. :func:`conditions` is what a report
states beside such figures: threads, spinning, the CPU and its INT8-relevant flags, runs and warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from toolchain.core.stats import Summary


def time_calls(fn: Callable[[], object], n: int, samples: list[float]) -> None:
    """Call ``fn`` ``n`` times, appending each call's duration in seconds to ``samples``."""
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)


def seconds_per_call(fn: Callable[[], object], *, min_calls: int = 3, min_seconds: float = 0.2) -> float:
    """Mean seconds per call of ``fn`` over at least ``min_calls`` calls and ``min_seconds`` of work (to size
    measurement windows)."""
    t = time.perf_counter()
    calls = 0
    while calls < min_calls or time.perf_counter() - t < min_seconds:
        fn()
        calls += 1
    return (time.perf_counter() - t) / calls


def interleaved_samples(candidates: dict[str, Callable[[], object]], *, warmup: int = 3, runs: int = 20,
                        min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Per-call seconds of each callable, round-robin (A B C A B C ...) after ``warmup`` untimed rounds;
    ``runs`` rounds, or more until ``min_seconds`` of timed work has accumulated."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    spent, rounds = 0.0, 0
    while rounds < runs or spent < min_seconds:
        for name, fn in candidates.items():
            before = len(samples[name])
            time_calls(fn, 1, samples[name])
            spent += samples[name][before]
        rounds += 1
    return samples


def interleaved(candidates: dict[str, Callable[[], object]], *, warmup: int = 3, runs: int = 20,
                min_seconds: float = 0.0) -> dict[str, Summary]:
    """:func:`interleaved_samples` summarised per candidate (milliseconds)."""
    return {name: Summary.of_seconds(s) for name, s in
            interleaved_samples(candidates, warmup=warmup, runs=runs, min_seconds=min_seconds).items()}


def conditions(threads: int | None, *, runs: int, warmup: int, spinning: bool = False) -> dict[str, Any]:
    """The conditions of alternated latency figures, for a report: ``threads`` (the intra-op threads
    actually used, :func:`toolchain.runtime.session.threads_used`: ONNX Runtime's default for None/0),
    ``spinning`` (False for sessions created with ``alternating=True``), ``cpu`` (``model``, logical
    ``cores``, ``machine`` and ``flags``: which INT8-relevant instruction sets it reports, by
    ``/proc/cpuinfo`` name, see :data:`toolchain.core.host.CPU_FLAGS`), ``runs`` and ``warmup``."""
    from toolchain.core.host import CPU_FLAGS, cpu_info, host_cpu_flags
    from toolchain.runtime.session import threads_used

    info = cpu_info()
    flags = host_cpu_flags() or set()
    return {"threads": threads_used(threads), "spinning": spinning,
            "cpu": {"model": info.model, "cores": info.cores, "machine": info.machine,
                    "flags": {flag: flag in flags for flag in CPU_FLAGS}},
            "runs": runs, "warmup": warmup}
