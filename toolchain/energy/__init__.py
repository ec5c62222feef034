"""Power meters. Each meter lives in its own file and exposes ``probe()`` -> :class:`MeterStatus`, which
says whether the meter can be read on this machine and, where not, why and how to fix it. Hardware roots
(sysfs paths, the NVML module) are parameters, so tests build fake trees instead of patching ``open``.

The measuring side of each meter (cumulative joules, resolution) arrives with the profiling work; the
probes here are what ``toolchain doctor`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeterStatus:
    """``readable``: the meter can be read now. ``detail``: what was found (zones, devices). ``fix``: how
    to make an unreadable meter readable (empty when readable). ``measured``: False for estimates."""

    name: str
    readable: bool
    detail: str
    fix: str = ""
    measured: bool = True


def probe_all() -> list[MeterStatus]:
    """Probe every meter on this machine's real paths."""
    from toolchain.energy import jetson, nvml, rapl

    return [rapl.probe(), nvml.probe(), jetson.probe()]
