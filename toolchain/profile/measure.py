"""Measuring a model on a meter: warm-up, an idle baseline, then repeated windows of N inferences long
enough for the meter's resolution. Each window gives joules per inference and watts, gross (what the
meter read) and net (minus the idle baseline's power over the same time); per-call latencies are timed
inside the windows. Comparisons interleave candidates window by window so that drift (thermal, other
load) hits every candidate alike. The ORT profiler is never on during these windows.

Batches: one call runs ``batch`` samples. Energy figures (``joules``, ``gross_joules``) are per sample, one
inference: a call's joules / ``batch``; latency stays per call (``latency``), with ``latency_per_sample``
beside it. Watts do not depend on the batch.

Other load: each window (and the idle baseline) records what share of all CPUs other processes used
during it (:mod:`toolchain.core.cpuload`, None where ``/proc/stat`` is absent: not checked); a window over
:data:`~toolchain.core.cpuload.OTHER_LOAD_WARN` adds a note saying its figures may be inflated.

A window that read below the idle baseline has its net energy clamped to 0, with a note saying by how
much; a candidate whose every window is clamped (on a measured meter) raises :class:`ToolchainError`:
its net figure would be 0 J, which says only that the idle baseline is unreliable. A window a counter
reset spoiled (:class:`~toolchain.energy.base.CounterResetError`) is measured again, once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from toolchain.core.cpuload import MIN_CHECK_S, OTHER_LOAD_WARN, CpuLoadProbe, other_share, windows_warning
from toolchain.core.errors import ToolchainError, option
from toolchain.core.stats import Summary
from toolchain.energy import CounterResetError, EnergyReading, Meter, WindowTooShortError
from toolchain.runtime.timing import seconds_per_call, time_calls


@dataclass(frozen=True)
class Window:
    """One measured window: ``inferences`` calls (of one batch each) in ``seconds``; ``gross_j`` as read,
    ``net_j`` minus the idle baseline (never below zero: clamped, with a note in the measurement), both for
    the whole window; ``other_cpu_share``: other processes' share of all CPUs meanwhile (None: not checked)."""

    inferences: int
    seconds: float
    gross_j: float
    net_j: float
    domains: dict[str, float]
    other_cpu_share: float | None = None


@dataclass
class Measurement:
    """Latency and energy of one candidate on one meter. Energy figures are per inference, one sample (a
    call's joules / ``batch``); latency is per call. ``measured`` is False when the meter is an estimate.
    ``cpus``: how many CPUs the load check saw (None: not checked)."""

    label: str
    meter: str
    measured: bool
    source: str
    idle_watts: float
    idle_seconds: float
    windows: list[Window]
    latency: Summary
    batch: int = 1
    notes: list[str] = field(default_factory=list)
    idle_other_cpu_share: float | None = None
    cpus: int | None = None

    @property
    def kind(self) -> str:
        return "measured" if self.measured else "estimated"

    @property
    def joules(self) -> Summary:
        """Net (active) joules per inference (one sample: a call's / ``batch``); idle power subtracted."""
        return Summary.of([w.net_j / (w.inferences * self.batch) for w in self.windows])

    @property
    def gross_joules(self) -> Summary:
        return Summary.of([w.gross_j / (w.inferences * self.batch) for w in self.windows])

    @property
    def latency_per_sample(self) -> Summary:
        """Per-call latency / ``batch`` (ms)."""
        return self.latency.scaled(1 / self.batch)

    def cpu_load(self) -> dict:
        """The load check: whether it ran (on any window), the CPUs it saw, the largest other-process share
        of a window, the threshold, and the windows over it and those not checked (1-based)."""
        shares = [w.other_cpu_share for w in self.windows]
        known = [s for s in shares if s is not None]
        return {"checked": bool(known), "source": load_source(self.cpus, len(known), len(shares)),
                "cpus": self.cpus, "max_other_share": max(known) if known else None, "threshold": OTHER_LOAD_WARN,
                "windows_over": [i for i, s in enumerate(shares, 1) if s is not None and s > OTHER_LOAD_WARN],
                "windows_not_checked": [i for i, s in enumerate(shares, 1) if s is None],
                "idle_other_share": self.idle_other_cpu_share}

    @property
    def watts(self) -> Summary:
        """Gross watts during the windows."""
        return Summary.of([w.gross_j / w.seconds for w in self.windows])

    @property
    def net_watts(self) -> Summary:
        return Summary.of([w.net_j / w.seconds for w in self.windows])

    def to_dict(self) -> dict:
        return {
            "label": self.label, "batch": self.batch, "per_inference": "sample",
            "meter": {"name": self.meter, "kind": self.kind, "source": self.source},
            "idle_baseline": {"watts": self.idle_watts, "seconds": self.idle_seconds,
                              "other_cpu_share": self.idle_other_cpu_share},
            "repeats": len(self.windows), "inferences_per_window": [w.inferences for w in self.windows],
            "latency_ms": self.latency.to_latency_dict(),
            "latency_ms_per_sample": self.latency_per_sample.to_latency_dict(),
            "joules_per_inference": {"net": self.joules.to_dict(), "gross": self.gross_joules.to_dict(),
                                     "kind": self.kind},
            "watts": {"gross": self.watts.to_dict(), "net": self.net_watts.to_dict(), "kind": self.kind},
            "cpu_load": self.cpu_load(), "windows": [asdict(w) for w in self.windows], "notes": self.notes,
        }


def load_source(cpus: int | None, checked: int, windows: int) -> str:
    """How the load check went, in words."""
    if cpus is None:
        return "not checked (/proc/stat not readable)"
    if not checked:
        return f"not checked: every window was under {MIN_CHECK_S:g} s (the kernel counts CPU time in ticks)"
    short = "" if checked == windows else (f"; {windows - checked} of {windows} windows not checked (under "
                                           f"{MIN_CHECK_S:g} s: the kernel counts CPU time in ticks)")
    return "/proc/stat and this process's CPU time" + short


def idle_baseline(meter: Meter, seconds: float, cpu: CpuLoadProbe | None = None) -> tuple[float, float | None]:
    """Watts the meter reads while this process sleeps for ``seconds`` (0 when ``seconds`` is 0), and
    other processes' share of all CPUs meanwhile (None: not checked, or no baseline)."""
    if seconds <= 0:
        return 0.0, None
    seconds = max(seconds, 2 * meter.min_window_s)
    resets = 0
    for attempt in range(3):
        start = cpu.read() if cpu else None
        token = meter.begin()
        time.sleep(seconds)
        try:
            watts = meter.end(token).watts
            return watts, (other_share(start, cpu.read()) if cpu and start else None)
        except WindowTooShortError:
            if attempt == 2:
                raise
            seconds *= 2
        except CounterResetError:
            resets += 1
            if resets > 1 or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _window(meter: Meter, fn: Callable[[], object], n: int, samples: list[float],
            cpu: CpuLoadProbe) -> tuple[EnergyReading, float | None, int | None]:
    start = cpu.read()
    token = meter.begin()
    time_calls(fn, n, samples)
    reading = meter.end(token)
    end = cpu.read()
    return reading, other_share(start, end), end.cpus


def _net(reading: EnergyReading, idle_w: float, where: str, notes: list[str]) -> float:
    """Joules above the idle baseline; a window below idle is clamped to 0 with a note (float noise, a
    billionth of the idle energy, is clamped without one)."""
    idle_j = idle_w * reading.seconds
    net = reading.total_j - idle_j
    if net >= 0:
        return net
    if -net > 1e-9 * idle_j:
        share = f" ({-net / idle_j:.1%})" if idle_j > 0 else ""
        notes.append(f"{where} read below idle: {reading.total_j:.4g} J against the idle baseline's {idle_j:.4g} J "
                     f"({idle_w:.4g} W) over {reading.seconds:.3g} s, {-net:.3g} J{share} below; "
                     "net energy clamped to 0")
    return 0.0


def _check_not_all_idle(name: str, meter: Meter, windows: list[Window], idle_w: float, idle_s: float) -> None:
    """A measured candidate whose every window is at or below idle has no energy figure, only a sign that
    the baseline is wrong (an all-zero cost table would divide by zero downstream)."""
    if not meter.measured or any(w.net_j > 0 for w in windows):
        return
    gross_w = sum(w.gross_j for w in windows) / sum(w.seconds for w in windows)
    if idle_w <= 0:
        raise ToolchainError(f"the {meter.name} meter read 0 J in every window of {name} ({meter.source})",
                             hint="check the meter with `toolchain doctor`, or use another meter")
    raise ToolchainError(
        f"every window of {name} read at or below the idle baseline ({gross_w:.4g} W against {idle_w:.4g} W idle, "
        f"measured over {idle_s:g} s): the idle baseline is unreliable",
        hint=f"measure a longer idle baseline ({option('--idle SECONDS', 'idle_s=SECONDS')}), or measure on a "
             "quieter machine")


def measure(candidates: dict[str, Callable[[], object]], meter: Meter, *, repeats: int = 5,
            window_s: float = 1.0, warmup: int = 3, idle_s: float = 2.0, batch: int = 1,
            progress: Callable[[str], None] | None = None,
            cpu: CpuLoadProbe | None = None) -> dict[str, Measurement]:
    """Measure each callable (one call runs one batch of ``batch`` samples) on ``meter``: an idle baseline
    of ``idle_s`` seconds, ``warmup`` untimed calls each, then ``repeats`` windows per candidate,
    interleaved (A B A B ...).

    Each candidate's window holds enough calls to last ``window_s`` seconds (at least ten times the
    meter's resolution); a window the meter cannot resolve is grown and measured again. ``cpu`` reads the
    machine's load at both ends of every window (default: this machine's ``/proc/stat``)."""
    run = Interleaved(candidates, meter, repeats=repeats, window_s=window_s, warmup=warmup, idle_s=idle_s,
                      batch=batch, progress=progress, cpu=cpu)
    run.prepare()
    for r in range(repeats):
        run.window(r)
    return run.results()


class Interleaved:
    """:func:`measure` in steps, so that windows can also be interleaved with candidates measured elsewhere
    (another process or node of the same machine, :mod:`toolchain.fleet`): :meth:`prepare` (idle baseline,
    warm-up, window sizes), :meth:`window` once per repeat (one window of every candidate), then
    :meth:`results`."""

    def __init__(self, candidates: dict[str, Callable[[], object]], meter: Meter, *, repeats: int = 5,
                 window_s: float = 1.0, warmup: int = 3, idle_s: float = 2.0, batch: int = 1,
                 progress: Callable[[str], None] | None = None, cpu: CpuLoadProbe | None = None):
        if repeats < 2:
            raise ToolchainError(f"{option('--repeats', 'repeats')} must be at least 2 (a spread needs two windows)")
        if not candidates:
            raise ToolchainError("nothing to measure")
        self.candidates, self.meter, self.repeats, self.warmup = candidates, meter, repeats, warmup
        self.window_s = max(window_s, 10 * meter.min_window_s)
        self.idle_s, self.batch, self.progress, self.cpu = idle_s, batch, progress, cpu or CpuLoadProbe()
        self.cpus: int | None = None
        self.idle_w, self.idle_share = 0.0, None
        self.sizes: dict[str, int] = {}
        self.windows: dict[str, list[Window]] = {name: [] for name in candidates}
        self.latencies: dict[str, list[float]] = {name: [] for name in candidates}
        self.notes: dict[str, list[str]] = {name: [] for name in candidates}

    def prepare(self) -> None:
        # idle first: after a run, ONNX Runtime's thread pool spins for a while and would inflate the baseline
        if self.progress and self.idle_s > 0:
            self.progress(f"idle baseline ({self.idle_s:g} s)")
        self.idle_w, self.idle_share = idle_baseline(self.meter, self.idle_s, self.cpu)
        for name, fn in self.candidates.items():
            for _ in range(self.warmup):
                fn()
            per_call = seconds_per_call(fn, min_calls=3, min_seconds=min(0.2, self.window_s / 5))
            self.sizes[name] = max(1, math.ceil(self.window_s / per_call))

    def window(self, r: int) -> None:
        """Window ``r`` (0-based) of every candidate, one after another."""
        repeats, meter = self.repeats, self.meter
        for name, fn in self.candidates.items():
            if self.progress:
                self.progress(f"{name}: window {r + 1}/{repeats} ({self.sizes[name]} inferences)")
            grown = resets = 0
            while True:
                try:
                    reading, share, self.cpus = _window(meter, fn, self.sizes[name], self.latencies[name], self.cpu)
                    break
                except WindowTooShortError as exc:
                    grown += 1
                    if grown == 4:
                        raise
                    self.sizes[name] *= 2
                    self.notes[name].append(f"window grown to {self.sizes[name]} inferences: {exc.message}")
                except CounterResetError as exc:
                    resets += 1
                    if resets == 2:
                        raise
                    self.notes[name].append(f"window {r + 1} measured again: {exc.message}")
            net = _net(reading, self.idle_w, f"window {r + 1}/{repeats}", self.notes[name])
            self.windows[name].append(Window(self.sizes[name], reading.seconds, reading.total_j, net,
                                             dict(reading.joules), share))

    def results(self) -> dict[str, Measurement]:
        meter, cpus, idle_share = self.meter, self.cpus, self.idle_share
        for name in self.candidates:
            _check_not_all_idle(name, meter, self.windows[name], self.idle_w, self.idle_s)
            warning = windows_warning([w.other_cpu_share for w in self.windows[name]], cpus)
            if warning:
                self.notes[name].append(warning)
            if idle_share is not None and idle_share > OTHER_LOAD_WARN:
                self.notes[name].append(f"idle baseline: other processes used {idle_share:.0%} of the {cpus} CPUs "
                                        f"(over {OTHER_LOAD_WARN:.0%}): the baseline may be inflated and net "
                                        "figures too low")
        return {name: Measurement(name, meter.name, meter.measured, meter.source, self.idle_w, self.idle_s,
                                  self.windows[name], Summary.of_seconds(self.latencies[name]), self.batch,
                                  self.notes[name], idle_share, cpus)
                for name in self.candidates}
