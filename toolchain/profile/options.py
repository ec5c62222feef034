"""How ``toolchain profile`` and ``toolchain compare`` measure: :class:`ProfileOptions`, checked on
construction (one-line :class:`ToolchainError` for a value out of its sane range,
:mod:`toolchain.profile.limits`). :mod:`toolchain.profile.run` re-exports it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from toolchain.core.errors import ToolchainError, option
from toolchain.energy import MeterOptions
from toolchain.profile.limits import (
    MAX_BATCH,
    MAX_IDLE_S,
    MAX_PROFILE_RUNS,
    MAX_REPEATS,
    MAX_SEQ_LEN,
    MAX_WARMUP,
    MAX_WATTS,
    MAX_WINDOW_S,
    MIN_WINDOW_S,
)


def _check_int(value, name: str, api: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ToolchainError(f"{option(name, api)} must be a whole number from {low} to {high}, not {value!r}")


def _check_float(value, name: str, api: str, low: float, high: float, *, open_low: bool = False) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
          and (value > low if open_low else value >= low) and value <= high)
    if not ok:
        raise ToolchainError(f"{option(name, api)} must be a finite number {'>' if open_low else '>='} {low:g} "
                             f"and <= {high:g}, not {value!r}")


@dataclass
class ProfileOptions:
    """How to measure: ``meter`` overrides the target's meter (``estimate`` for a labelled estimate);
    ``repeats`` windows of at least ``window_s`` seconds after ``warmup`` calls and an idle baseline of
    ``idle_s`` seconds (default: the target's); ``profile_runs`` profiled runs for the per-layer split.
    ``batch`` samples per call: energy is reported per sample (a call's joules / ``batch``), latency per
    call (and per sample beside it)."""

    meter: str | None = None
    meter_options: MeterOptions = field(default_factory=MeterOptions)
    repeats: int = 5
    window_s: float = 1.0
    warmup: int = 5
    idle_s: float | None = None
    profile_runs: int = 20
    threads: int | None = None
    batch: int = 1
    data: str | None = None
    seq_len: int = 128

    def __post_init__(self) -> None:
        """Every count and duration within its sane range (one-line :class:`ToolchainError` otherwise), and
        ``threads`` at most this machine's cores (:func:`toolchain.runtime.session.check_threads`)."""
        from toolchain.runtime.session import check_threads

        _check_int(self.repeats, "--repeats", "repeats", 2, MAX_REPEATS)
        _check_float(self.window_s, "--window", "window_s", MIN_WINDOW_S, MAX_WINDOW_S)
        _check_int(self.warmup, "--warmup", "warmup", 0, MAX_WARMUP)
        if self.idle_s is not None:
            _check_float(self.idle_s, "--idle", "idle_s", 0, MAX_IDLE_S)
        _check_int(self.profile_runs, "--profile-runs", "profile_runs", 1, MAX_PROFILE_RUNS)
        _check_int(self.batch, "--batch", "batch", 1, MAX_BATCH)
        _check_int(self.seq_len, "--seq-len", "seq_len", 1, MAX_SEQ_LEN)
        if self.threads is not None:
            _check_int(self.threads, "--threads", "threads", 0, 1 << 30)
            check_threads(self.threads, option("--threads", "threads"))
        for name, api in (("--watts", "watts"), ("--watts-per-core", "watts_per_core")):
            value = getattr(self.meter_options, api, None)
            if value is not None:
                _check_float(value, name, f"meter_options.{api}", 0, MAX_WATTS, open_low=True)
