"""The meter protocol every power meter implements (see :mod:`toolchain.energy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from toolchain.core.errors import MeterUnavailableError, ToolchainError


@dataclass(frozen=True)
class MeterStatus:
    """``readable``: the meter can be read now. ``detail``: what was found (zones, devices). ``fix``: how
    to make an unreadable meter readable (empty when readable). ``measured``: False for estimates."""

    name: str
    readable: bool
    detail: str
    fix: str = ""
    measured: bool = True


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one window. ``joules``: per domain (``package-0``, ``dram-0``, ``gpu0``, ``VDD_IN`` ...);
    ``total_j``: the meter's total for the window, without double counting (RAPL core/uncore are parts of
    their package and are not added again); ``seconds``: wall time of the window; ``samples``: power
    samples integrated (0 for counter meters)."""

    joules: dict[str, float]
    total_j: float
    seconds: float
    samples: int = 0

    @property
    def watts(self) -> float:
        return self.total_j / self.seconds if self.seconds > 0 else 0.0


class WindowTooShortError(ToolchainError):
    """The meter's counter did not advance (or too few samples were taken) within the window."""


class CounterResetError(MeterUnavailableError):
    """A cumulative energy counter went backwards by more than a wraparound can explain (driver reload,
    counter reset): the window's figure is lost, but a new window measured after it is valid."""


@runtime_checkable
class Meter(Protocol):
    """``name``: ``rapl``, ``nvml``, ``jetson`` or ``estimate``. ``measured``: False only for estimates.
    ``source``: one line saying exactly what is read (files, devices, or the estimate's model and its
    constants), written next to every figure. ``min_window_s``: the shortest window the meter resolves."""

    name: str
    measured: bool
    source: str
    min_window_s: float

    def begin(self) -> object:
        """Start a window and return a token for :meth:`end`."""

    def end(self, token: object) -> EnergyReading:
        """Close the window started by ``token``; raises :class:`WindowTooShortError` if it was too short."""

    def close(self) -> None:
        """Release the meter (NVML shutdown, stop sampler threads)."""


@dataclass
class MeterOptions:
    """What ``open_meter`` passes on: ``watts`` for the estimate meter (whole-device watts the user gives),
    ``watts_per_core`` to override the TDP table, ``devices`` to restrict NVML to some GPU indices."""

    watts: float | None = None
    watts_per_core: float | None = None
    devices: list[int] = field(default_factory=list)
