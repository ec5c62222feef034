"""Estimated energy: an explicit model, never a measurement (``measured`` is False everywhere).

Two models, chosen by what the user gives:

* ``watts`` (whole-device power): joules = wall seconds of the window x ``watts``.
* otherwise: joules = process CPU seconds of the window x watts per core, where watts per core is
  ``watts_per_core`` when given, else TDP / cores of the CPU model found in :data:`TDP_TABLE` (matched on
  ``/proc/cpuinfo``'s model name), else a labelled generic figure. ``time.process_time`` counts every
  thread of this process, ONNX Runtime's intra-op threads included, but not other processes. It counts
  logical-CPU seconds, so with SMT siblings both busy it over-counts against a per-core TDP share (an
  upper-side estimate); TDP is a thermal design figure, not a measured draw.

A window shorter than :data:`MIN_WINDOW_S` (10 ms, coarser than ``process_time``'s resolution on any
platform) raises :class:`WindowTooShortError`; a window with no CPU time reads as 0 J (idle).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import MeterUnavailableError
from toolchain.core.host import CPUINFO, read_cpuinfo
from toolchain.energy.base import EnergyReading, MeterOptions, MeterStatus, WindowTooShortError

MIN_WINDOW_S = 0.01


@dataclass(frozen=True)
class Tdp:
    """One TDP table row: ``key`` is matched as a substring of the normalised model name."""

    key: str
    label: str
    tdp_w: float
    cores: int

    @property
    def per_core_w(self) -> float:
        return self.tdp_w / self.cores


# Specific models first, then generic fallbacks per family, then the catch-all (key "").
TDP_TABLE: tuple[Tdp, ...] = (
    # source: AMD EPYC 9004 series product page (9654: 96 cores, 360 W default TDP)
    Tdp("epyc 9654", "AMD EPYC 9654", 360, 96),
    # source: AMD EPYC 9004 series product page (9554: 64 cores, 360 W default TDP)
    Tdp("epyc 9554", "AMD EPYC 9554", 360, 64),
    # source: AMD EPYC 7003 series product page (7763: 64 cores, 280 W default TDP)
    Tdp("epyc 7763", "AMD EPYC 7763", 280, 64),
    # source: AMD EPYC 7003 series product page (7543: 32 cores, 225 W default TDP)
    Tdp("epyc 7543", "AMD EPYC 7543", 225, 32),
    # source: AMD EPYC 7002 series product page (7742: 64 cores, 225 W default TDP)
    Tdp("epyc 7742", "AMD EPYC 7742", 225, 64),
    # source: Intel ARK, Xeon Platinum 8480+ (56 cores, 350 W TDP)
    Tdp("xeon platinum 8480", "Intel Xeon Platinum 8480+", 350, 56),
    # source: Intel ARK, Xeon Platinum 8380 (40 cores, 270 W TDP)
    Tdp("xeon platinum 8380", "Intel Xeon Platinum 8380", 270, 40),
    # source: Intel ARK, Xeon Gold 6338 (32 cores, 205 W TDP)
    Tdp("xeon gold 6338", "Intel Xeon Gold 6338", 205, 32),
    # source: Intel ARK, Core i9-13900K (24 cores, 125 W processor base power)
    Tdp("core i9-13900k", "Intel Core i9-13900K", 125, 24),
    # source: Intel ARK, Core i7-12700K (12 cores, 125 W processor base power)
    Tdp("core i7-12700k", "Intel Core i7-12700K", 125, 12),
    # source: AMD Ryzen 9 7950X product page (16 cores, 170 W default TDP)
    Tdp("ryzen 9 7950x", "AMD Ryzen 9 7950X", 170, 16),
    # source: AMD Ryzen 9 5950X product page (16 cores, 105 W default TDP)
    Tdp("ryzen 9 5950x", "AMD Ryzen 9 5950X", 105, 16),
    # source: Ampere Altra product brief (Q80-30: 80 Neoverse-N1 cores, 210 W TDP); AWS Graviton2 has the
    # same core and reports the same part number, and AWS publishes no TDP for it
    Tdp("neoverse-n1", "Neoverse-N1 (Ampere Altra Q80-30 figure)", 210, 80),
    # source: none official, AWS publishes no Graviton3 TDP; ~100 W is the figure reported by the press
    Tdp("neoverse-v1", "Neoverse-V1 (AWS Graviton3, approximate)", 100, 64),
    # generic: EPYC 7763-class (source: AMD, as above); cloud VMs often report only "AMD EPYC"
    Tdp("epyc", "AMD EPYC generic (EPYC 7763-class)", 280, 64),
    # generic: Xeon Platinum 8380-class (source: Intel ARK, as above)
    Tdp("xeon", "Intel Xeon generic (Xeon Platinum 8380-class)", 270, 40),
    # generic: assumed figure, no source; give watts_per_core for a better estimate
    Tdp("", "unknown CPU, assumed", 80, 16),
)

ARM_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd4f": "Neoverse-V2"}  # CPU implementer 0x41


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The ``model name`` in ``cpuinfo``, or the Arm core name from ``CPU part``, or ``unknown``."""
    fields = read_cpuinfo(cpuinfo)
    if fields is None:
        return "unknown"
    if fields.get("model name"):
        return fields["model name"]
    return ARM_PARTS.get(fields.get("cpu part", "").lower(), "unknown")


def lookup(model: str) -> Tdp:
    """The first :data:`TDP_TABLE` row whose key is in ``model`` (normalised: lower case, no (R)/(TM))."""
    norm = " ".join(re.sub(r"\((r|tm)\)", " ", model.lower()).split())
    return next(row for row in TDP_TABLE if row.key in norm)


def per_core_watts(watts_per_core: float | None = None, cpuinfo: Path = CPUINFO) -> tuple[float, str]:
    """Watts per core and where the figure comes from."""
    if watts_per_core is not None:
        return watts_per_core, "user-given"
    row = lookup(cpu_model(cpuinfo))
    return row.per_core_w, f"{row.label}: {row.tdp_w:g} W TDP / {row.cores} cores; TDP table"


@dataclass
class _Window:
    wall: float
    cpu: float


class EstimateMeter:
    """Joules from a model (see the module docstring); ``source`` states the formula and constants."""

    name = "estimate"
    measured = False
    min_window_s = MIN_WINDOW_S

    def __init__(self, watts: float | None, watts_per_core: float, why: str) -> None:
        self.watts, self.watts_per_core = watts, watts_per_core
        if watts is not None:
            self.source = f"estimated: wall time x {watts:g} W (user-given whole-device power)"
        else:
            self.source = f"estimated: process CPU time x {watts_per_core:.3g} W/core ({why})"

    def begin(self) -> _Window:
        return _Window(time.perf_counter(), time.process_time())

    def end(self, token: object) -> EnergyReading:
        assert isinstance(token, _Window), "end() takes the token begin() returned"
        cpu, seconds = time.process_time() - token.cpu, time.perf_counter() - token.wall
        if seconds < MIN_WINDOW_S:
            raise WindowTooShortError(
                f"the {seconds * 1000:.2f} ms window is shorter than the estimate's "
                f"{MIN_WINDOW_S * 1000:g} ms resolution (process CPU time)",
                hint=f"measure windows of at least {MIN_WINDOW_S:g} s")
        if self.watts is not None:
            joules = {"device": seconds * self.watts}
        else:
            joules = {"cpu": cpu * self.watts_per_core}
        return EnergyReading(joules, sum(joules.values()), seconds)

    def close(self) -> None:
        """Nothing to release."""


def open(watts: float | None = None, watts_per_core: float | None = None,
         cpuinfo: Path = CPUINFO) -> EstimateMeter:
    """The estimate meter: ``watts`` x wall time, or CPU time x ``watts_per_core`` (default: TDP table)."""
    if watts is not None and watts_per_core is not None:
        raise MeterUnavailableError(
            "the estimate takes either whole-device watts or watts per core, not both", hint="give only one")
    for what, value in (("watts", watts), ("watts per core", watts_per_core)):
        if value is not None and not value > 0:
            raise MeterUnavailableError(f"the estimate's {what} must be positive, not {value}",
                                        hint=f"give the {what} as a positive number")
    per_core, why = per_core_watts(watts_per_core, cpuinfo)
    return EstimateMeter(watts, per_core, why)


def probe(cpuinfo: Path = CPUINFO) -> MeterStatus:
    """Always readable: the estimate is a model, not a measurement."""
    per_core, why = per_core_watts(None, cpuinfo)
    detail = (f"a model, not a measurement: process CPU time x {per_core:.3g} W/core ({why}), "
              "or wall time x whole-device watts you give")
    return MeterStatus("estimate", True, detail, measured=False)


def from_options(options: MeterOptions) -> EstimateMeter:
    """The registry's opener: ``options.watts`` (whole-device watts) or ``options.watts_per_core``."""
    return open(watts=options.watts, watts_per_core=options.watts_per_core)
