"""How much of the machine other processes used during a measuring window (Linux ``/proc/stat``).

At each end of a window :class:`CpuLoadProbe` reads every CPU's busy time (``/proc/stat``'s aggregate
``cpu`` line: user + nice + system + irq + softirq, in clock ticks) and this process's own CPU time
(``os.times()``: user + system of all its threads, ONNX Runtime's pools included). Other processes' share
of the machine over the window is then

    (busy seconds - own seconds) / (elapsed seconds x CPUs)

clamped to [0, 1]. ``iowait``, ``steal`` and ``guest`` time are not counted as busy (guest time is already
inside user time). Where ``/proc/stat`` cannot be read, or a window is shorter than :data:`MIN_CHECK_S`
(the kernel counts CPU time in ticks, so a shorter window's share is mostly rounding), the share is None:
"not checked", never 0.
Hardware roots and clocks are parameters, so tests feed fake readings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Other processes' share of all CPUs above which a window is flagged. One tenth of the machine (on 2 cores:
# a neighbour busy on one core for a fifth of the window) slows the model measurably there and adds its
# power to what the meter reads; below it, scheduler noise and tick rounding dominate.
OTHER_LOAD_WARN = 0.10

# Shortest window whose share is computed: 20 ticks of USER_HZ (100/s). /proc/stat and os.times() count
# whole ticks, so the share of a window of n ticks is off by up to about 2/n (10% at 20 ticks, when the
# two readings round the opposite way; half of that typically).
MIN_CHECK_S = 0.2

STAT_PATH = "/proc/stat"


@dataclass(frozen=True)
class CpuTimes:
    """One reading: ``busy_s`` all CPUs' busy seconds since boot (None: not readable), ``cpus`` how many
    CPUs ``/proc/stat`` lists, ``own_s`` this process's CPU seconds, ``wall_s`` a monotonic clock."""

    busy_s: float | None
    cpus: int | None
    own_s: float
    wall_s: float


def parse_stat(text: str, ticks_per_s: float) -> tuple[float, int] | None:
    """All CPUs' busy seconds and the number of CPUs from the text of ``/proc/stat``, or None when it has
    no aggregate ``cpu`` line of at least seven numbers."""
    busy, cpus = None, 0
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            try:
                values = [int(v) for v in parts[1:8]]
            except ValueError:
                return None
            if len(values) < 7:
                return None
            user, nice, system, _idle, _iowait, irq, softirq = values
            busy = (user + nice + system + irq + softirq) / ticks_per_s
        elif parts[0].startswith("cpu") and parts[0][3:].isdigit():
            cpus += 1
    return (busy, cpus) if busy is not None and cpus > 0 else None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class CpuLoadProbe:
    """Reads :class:`CpuTimes` from ``stat_path`` (default ``/proc/stat``), ``own_cpu`` (seconds of this
    process's CPU time, default ``os.times()``) and ``clock`` (default ``time.monotonic``)."""

    def __init__(self, stat_path: str | os.PathLike = STAT_PATH, own_cpu: Callable[[], float] = _own_cpu_s,
                 clock: Callable[[], float] = time.monotonic, ticks_per_s: float | None = None):
        self.stat_path = Path(stat_path)
        self.own_cpu = own_cpu
        self.clock = clock
        if ticks_per_s is None:
            try:
                ticks_per_s = float(os.sysconf("SC_CLK_TCK"))
            except (AttributeError, ValueError, OSError):
                ticks_per_s = 100.0  # Linux's USER_HZ on every common architecture
        self.ticks_per_s = ticks_per_s

    def read(self) -> CpuTimes:
        """One reading; ``busy_s`` and ``cpus`` are None when ``stat_path`` is absent or unreadable."""
        try:
            parsed = parse_stat(self.stat_path.read_text(), self.ticks_per_s)
        except (OSError, UnicodeDecodeError):
            parsed = None
        busy, cpus = parsed if parsed is not None else (None, None)
        return CpuTimes(busy, cpus, self.own_cpu(), self.clock())


def other_share(begin: CpuTimes, end: CpuTimes, min_s: float = MIN_CHECK_S) -> float | None:
    """Other processes' share of all CPUs between two readings, in [0, 1]; None when either reading lacks
    ``/proc/stat`` or less than ``min_s`` seconds passed (not checked)."""
    if begin.busy_s is None or end.busy_s is None or not end.cpus:
        return None
    elapsed = end.wall_s - begin.wall_s
    if elapsed <= 0 or elapsed < min_s:
        return None
    others = (end.busy_s - begin.busy_s) - (end.own_s - begin.own_s)
    return min(1.0, max(0.0, others / (elapsed * end.cpus)))


def load_warning(where: str, share: float | None, cpus: int | None, threshold: float = OTHER_LOAD_WARN) -> str | None:
    """The warning for a window whose other-process share is over ``threshold``, else None."""
    if share is None or share <= threshold:
        return None
    return (f"{where}: other processes used {share:.0%} of the {cpus} CPUs (over {threshold:.0%}): "
            "figures may be inflated")


def windows_warning(shares: list[float | None], cpus: int | None, threshold: float = OTHER_LOAD_WARN) -> str | None:
    """One warning for all of a measurement's windows over ``threshold`` (``shares``: each window's other-
    process share, in order), or None: ``window 2/3: other processes used 47% ...`` for one, ``windows 1, 2,
    4 of 5: other processes used 44-56% ...`` for several."""
    over = [(i, x) for i, x in enumerate(shares, 1) if x is not None and x > threshold]
    if not over:
        return None
    if len(over) == 1:
        return load_warning(f"window {over[0][0]}/{len(shares)}", over[0][1], cpus, threshold)
    low, high = min(x for _, x in over), max(x for _, x in over)
    used = f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{100 * low:.0f}-{high:.0%}"
    return (f"windows {', '.join(str(i) for i, _ in over)} of {len(shares)}: other processes used {used} of the "
            f"{cpus} CPUs (over {threshold:.0%}): figures may be inflated")
