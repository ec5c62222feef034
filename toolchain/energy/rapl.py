"""Intel/AMD RAPL through the powercap sysfs tree (``/sys/class/powercap/intel-rapl:N``).

Zones ``intel-rapl:N`` are packages (sockets; AMD machines expose theirs under the same name), subzones
``intel-rapl:N:M`` their ``core``, ``uncore`` and ``dram`` parts. Each ``energy_uj`` is a cumulative
counter in microjoules that wraps at ``max_energy_range_uj``; the meter reads them directly (no pyRAPL)
at both ends of a window. A window's total is packages + dram: core and uncore are parts of their package
and ``psys`` (the whole platform, on some laptops) contains the packages, so those are reported but not
added. Wraparound: an end value below the start value means the counter wrapped, and
``max_energy_range_uj`` is added once; more than one wrap per window cannot be detected (the range is
usually 262 kJ, about 20 minutes of one socket at 200 W, far longer than a profiled window). A counter
that goes backwards because it was reset (the ``intel_rapl`` module reloaded) would read as a wrap of
up to the whole range; a "wrap" whose energy implies more than :data:`MAX_PLAUSIBLE_W` for the window
(at least :data:`MIN_WINDOW_S` long) is therefore a reset and raises :class:`CounterResetError`.
The counters update about every 1 ms, so :data:`MIN_WINDOW_S` is 10 ms (one update is <= 10% of it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import MeterUnavailableError
from toolchain.energy.base import (
    CounterResetError,
    EnergyReading,
    MeterOptions,
    MeterStatus,
    WindowTooShortError,
)

POWERCAP_ROOT = Path("/sys/class/powercap")
GRANT_READ = ("grant read access as root: `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
              "/sys/class/powercap/intel-rapl:*/*/energy_uj` (or a udev rule to keep it across reboots)")
MIN_WINDOW_S = 0.01
MAX_PLAUSIBLE_W = 10_000.0  # per RAPL domain: far above any socket or DIMM set, far below a 262 kJ reset
RELOAD_HINT = ("if the powercap driver was reloaded (`sudo modprobe intel_rapl_common`), its files are back "
               "once it is loaded; then measure again")


def zones(root: Path = POWERCAP_ROOT) -> list[Path]:
    """Top-level RAPL zones (one per package/socket) and their subzones (core, uncore, dram)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("intel-rapl:*") if (p / "energy_uj").exists())


def read_counter(path: Path) -> int:
    """One sysfs counter as an integer: the only place the meter reads counters (tests make it fail)."""
    return int(path.read_text())


def _read(path: Path) -> int:
    try:
        return read_counter(path)
    except PermissionError as exc:
        raise MeterUnavailableError(f"{path} is readable by root only", hint=GRANT_READ) from exc
    except FileNotFoundError as exc:
        raise MeterUnavailableError(f"the RAPL counter {path} vanished (the intel_rapl module was unloaded?)",
                                    hint=RELOAD_HINT) from exc
    except (OSError, ValueError) as exc:
        raise MeterUnavailableError(f"{path} is unreadable ({exc})", hint=GRANT_READ) from exc


@dataclass(frozen=True)
class Domain:
    """One counter: ``name`` (``package-0``, ``dram-0``, ``core-1``), its zone directory, its wrap range,
    and whether it counts towards the window's total."""

    name: str
    zone: Path
    max_uj: int
    in_total: bool


def domains(root: Path = POWERCAP_ROOT) -> list[Domain]:
    """Every zone under ``root`` as a :class:`Domain`, named from its ``name`` file plus socket index."""
    found: list[Domain] = []
    for zone in zones(root):
        ids = zone.name.split(":")[1:]
        kind = (zone / "name").read_text().strip() if (zone / "name").exists() else "package"
        label = kind if len(ids) == 1 and kind.rpartition("-")[2].isdigit() else f"{kind}-{ids[0]}"
        if any(d.name == label for d in found):
            label = f"{label}@{zone.name}"
        base = kind.rpartition("-")[0] if kind.rpartition("-")[2].isdigit() else kind
        in_total = base == "dram" if len(ids) > 1 else base != "psys"
        found.append(Domain(label, zone, _read(zone / "max_energy_range_uj"), in_total))
    return found


@dataclass
class _Window:
    start: float
    counters: dict[str, int]


class RaplMeter:
    """CPU package and DRAM energy from the RAPL counters (all sockets)."""

    name = "rapl"
    measured = True
    min_window_s = MIN_WINDOW_S

    def __init__(self, root: Path, found: list[Domain]) -> None:
        self.domains = found
        self.source = f"RAPL powercap sysfs {root}: " + ", ".join(
            f"{d.name} ({d.zone.name}{'' if d.in_total else ', not in total'})" for d in found)
        self._counters()  # fail now, not at the first window, if a counter is unreadable

    def _counters(self) -> dict[str, int]:
        return {d.name: _read(d.zone / "energy_uj") for d in self.domains}

    def begin(self) -> _Window:
        return _Window(time.perf_counter(), self._counters())

    def end(self, token: object) -> EnergyReading:
        assert isinstance(token, _Window), "end() takes the token begin() returned"
        after = self._counters()
        seconds = time.perf_counter() - token.start
        joules = {d.name: self._joules(d, token.counters[d.name], after[d.name], seconds) for d in self.domains}
        total = sum(joules[d.name] for d in self.domains if d.in_total)
        if total <= 0:
            raise WindowTooShortError(
                f"the RAPL counters did not advance in the {seconds * 1000:.2f} ms window (they update about "
                "every 1 ms)", hint=f"measure windows of at least {MIN_WINDOW_S:g} s")
        return EnergyReading(joules, total, seconds)

    @staticmethod
    def _joules(d: Domain, before: int, after: int, seconds: float) -> float:
        """Joules of ``d`` between two counter values: one wrap at most, and only a plausible one."""
        delta = after - before
        if delta >= 0:
            return delta / 1e6
        wrapped = (delta + d.max_uj) / 1e6
        watts = wrapped / max(seconds, MIN_WINDOW_S)
        if wrapped < 0 or watts > MAX_PLAUSIBLE_W:
            raise CounterResetError(
                f"the RAPL counter {d.name} ({d.zone / 'energy_uj'}) went back from {before} to {after} uJ in "
                f"the {seconds * 1000:.1f} ms window: as a wraparound that would be {wrapped:.0f} J "
                f"({watts:.3g} W, above the {MAX_PLAUSIBLE_W:g} W plausible), so the counter was reset",
                hint="measure again: a module reload or suspend resets the counters; if it keeps happening, "
                     "find what reloads intel_rapl")
        return wrapped

    def close(self) -> None:
        """Nothing to release: the counters are plain files read on demand."""


def open(root: Path = POWERCAP_ROOT) -> RaplMeter:
    """Open every RAPL zone under ``root``; raises ``MeterUnavailableError`` with the fix if unreadable."""
    status = probe(root)
    if not status.readable:
        raise MeterUnavailableError(status.detail, hint=status.fix)
    return RaplMeter(root, domains(root))


def probe(root: Path = POWERCAP_ROOT) -> MeterStatus:
    """Is RAPL present and readable under ``root``?"""
    if not root.is_dir():
        return MeterStatus("rapl", False, f"{root} does not exist: this kernel or machine exposes no RAPL "
                           "(virtual machines and containers usually hide it)",
                           "run on bare metal with the intel_rapl_common kernel module loaded")
    found = zones(root)
    if not found:
        return MeterStatus("rapl", False, f"{root} has no intel-rapl zones",
                           "load the kernel module: `sudo modprobe intel_rapl_common`")
    names = []
    for zone in found:
        try:
            int((zone / "energy_uj").read_text())
        except PermissionError:
            return MeterStatus("rapl", False, f"{zone / 'energy_uj'} is readable by root only", GRANT_READ)
        except (OSError, ValueError) as exc:
            return MeterStatus("rapl", False, f"{zone / 'energy_uj'} is unreadable ({exc})", GRANT_READ)
        label = (zone / "name").read_text().strip() if (zone / "name").exists() else zone.name
        names.append(f"{zone.name}={label}")
    return MeterStatus("rapl", True, "zones: " + ", ".join(names))


def from_options(options: MeterOptions) -> RaplMeter:
    """The registry's opener (:func:`toolchain.energy.open_meter`): RAPL takes no options."""
    return open()
