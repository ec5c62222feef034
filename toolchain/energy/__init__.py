"""Power meters: one small protocol, one file per meter.

Each meter module exposes ``probe(...) -> MeterStatus`` (can it be read here, and if not why and how to
fix it; what ``toolchain doctor`` reports) and ``open(...) -> Meter`` (raises
:class:`~toolchain.errors.MeterUnavailableError` with the fix when it cannot be read). Hardware roots
(sysfs paths, the NVML module) are parameters, so tests build fake trees instead of patching ``open``.

A new meter is one file plus one entry in :data:`METERS`: a module with ``probe() -> MeterStatus``,
``open(...) -> Meter`` (hardware roots as parameters) and ``from_options(options: MeterOptions) -> Meter``
(what :func:`open_meter` calls). Everything that lists meters (target validation, ``doctor``, the
``--meter`` choices) reads :data:`METERS`.

A :class:`Meter` measures windows: ``token = meter.begin()``, run the workload, ``meter.end(token)`` ->
:class:`EnergyReading`. Counter meters (RAPL, the NVML energy counter) read cumulative counters at both
ends; sampling meters (NVML power, Jetson rails) sample power on a background thread between ``begin``
and ``end`` and integrate it. ``min_window_s`` is the shortest window the meter resolves (its update
interval); a window too short for it raises :class:`WindowTooShortError`, it never reads as zero.
No meter returns a zero or negative window either: a negative sample is a meter fault
(``MeterUnavailableError``), a device that reads 0 window after window is unavailable, a counter that
went backwards by more than a wraparound explains raises :class:`CounterResetError` (measure again),
and a meter error after ``open`` (files gone, NVML failing) is a ``MeterUnavailableError`` too.
"""

from __future__ import annotations

from types import ModuleType

from toolchain.core.errors import MeterUnavailableError
from toolchain.energy import estimate, jetson, nvml, rapl
from toolchain.energy.base import (
    CounterResetError,
    EnergyReading,
    Meter,
    MeterOptions,
    MeterStatus,
    WindowTooShortError,
)

# name -> meter module, in order of preference where a target names several
METERS: dict[str, ModuleType] = {"rapl": rapl, "nvml": nvml, "jetson": jetson, "estimate": estimate}


def open_meter(name: str, options: MeterOptions | None = None) -> Meter:
    """Open the meter called ``name`` on this machine's real paths, or raise ``MeterUnavailableError``."""
    if name not in METERS:
        raise MeterUnavailableError(f"unknown power meter {name!r}", hint=f"choose one of {', '.join(METERS)}")
    return METERS[name].from_options(options or MeterOptions())


def probe_all() -> list[MeterStatus]:
    """Probe every meter on this machine's real paths, in the order of :data:`METERS`."""
    return [module.probe() for module in METERS.values()]


__all__ = ["METERS", "CounterResetError", "EnergyReading", "Meter", "MeterOptions", "MeterStatus", "WindowTooShortError", "open_meter",
           "probe_all"]
