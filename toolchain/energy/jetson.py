"""NVIDIA Jetson power rails: the INA3221 monitors the board exposes through hwmon.

Each channel ``N`` of a monitor has ``inN_label`` (``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC`` ...),
``inN_input`` (bus voltage, mV) and ``currN_input`` (current, mA); its power is mV x mA / 1e6 W. The
meter samples every rail on a background thread (every ``sample_interval_s``) and integrates the power
(trapezoid rule). The window's total is the ``VDD_IN`` rail when the board has one (the whole board's
input, which the other rails are parts of), otherwise the sum of the rails. Channels labelled ``NC``
(not connected) are skipped. JetPack 4's ``ina3221x`` iio files (``in_power0_input``) are not read.

No window reads as zero or less: a negative voltage or current is a meter fault and raises
``MeterUnavailableError`` naming the rail; a window whose total is 0 J raises :class:`WindowTooShortError`,
and ``MeterUnavailableError`` when :data:`~toolchain.energy.nvml.ZERO_WINDOWS` windows in a row read 0.
Rail files that vanish mid-run (driver unbound) raise ``MeterUnavailableError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import MeterUnavailableError
from toolchain.energy.base import EnergyReading, MeterOptions, MeterStatus, WindowTooShortError
from toolchain.energy.nvml import MIN_SAMPLES, ZERO_WINDOWS, PowerSampler

I2C_DRIVERS = Path("/sys/bus/i2c/drivers")
BOARD_RAIL = "VDD_IN"


def rails(root: Path = I2C_DRIVERS) -> list[Path]:
    """hwmon directories of INA3221 monitors (``ina3221`` on JetPack 5+, ``ina3221x`` before)."""
    found: list[Path] = []
    for driver in ("ina3221", "ina3221x"):
        found += sorted((root / driver).glob("*/hwmon/hwmon*")) if (root / driver).is_dir() else []
    return found


def read_value(path: Path) -> int:
    """One sysfs value as an integer: the only place the meter reads rails (tests make it fail)."""
    return int(path.read_text())


@dataclass(frozen=True)
class Rail:
    """One INA3221 channel: its label and its voltage (mV) and current (mA) files."""

    label: str
    volts: Path
    amps: Path


def channels(root: Path = I2C_DRIVERS) -> list[Rail]:
    """Every labelled, connected channel with voltage and current inputs, over all monitors."""
    found: list[Rail] = []
    for hw in rails(root):
        for label_file in sorted(hw.glob("in*_label")):
            n = re.fullmatch(r"in(\d+)_label", label_file.name)
            if not n:
                continue
            volts, amps = hw / f"in{n[1]}_input", hw / f"curr{n[1]}_input"
            label = label_file.read_text().strip()
            if not volts.exists() or not amps.exists() or label.upper() in ("", "NC"):
                continue
            if any(r.label == label for r in found):
                label = f"{label}@{hw.parent.parent.name}"
            found.append(Rail(label, volts, amps))
    return found


class JetsonMeter:
    """Board energy from the INA3221 rails, sampled on a background thread."""

    name = "jetson"
    measured = True

    def __init__(self, found: list[Rail], sample_interval_s: float) -> None:
        self.rails, self._interval = found, sample_interval_s
        self.min_window_s = (MIN_SAMPLES - 1) * sample_interval_s
        self._board = any(r.label == BOARD_RAIL for r in found)
        self._zero_windows = 0
        total = BOARD_RAIL if self._board else "sum of rails"
        self.source = (f"Jetson INA3221 rails sampled every {sample_interval_s * 1000:g} ms: "
                       + ", ".join(f"{r.label} ({r.volts.parent})" for r in found) + f"; total = {total}")
        self.power()  # fail now, not at the first window, if a rail is unreadable

    def power(self) -> dict[str, float]:
        """Watts per rail now."""
        watts = {}
        for rail in self.rails:
            try:
                mv, ma = read_value(rail.volts), read_value(rail.amps)
            except PermissionError as exc:
                raise MeterUnavailableError(
                    f"{rail.volts.parent} is not readable",
                    hint=f"grant read access: `sudo chmod a+r {rail.volts.parent}/*`") from exc
            except FileNotFoundError as exc:
                raise MeterUnavailableError(
                    f"the Jetson rail {rail.label}'s files vanished ({exc.filename or rail.volts}): the ina3221 "
                    "driver was unbound or reloaded", hint=f"check `ls {rail.volts.parent}`, then measure again") from exc
            except (OSError, ValueError) as exc:
                raise MeterUnavailableError(
                    f"{rail.volts} or {rail.amps} is unreadable ({exc})",
                    hint=f"check the ina3221 driver: `ls {rail.volts.parent}`") from exc
            if mv < 0 or ma < 0:
                raise MeterUnavailableError(
                    f"the Jetson rail {rail.label} read {mv} mV x {ma} mA ({rail.volts.name}, {rail.amps.name} in "
                    f"{rail.volts.parent}): negative readings are a power-monitor fault",
                    hint=f"check the monitor (`cat {rail.amps}` under load), or use the estimate meter")
            watts[rail.label] = mv * ma / 1e6
        return watts

    def begin(self) -> PowerSampler:
        return PowerSampler(self.power, self._interval, "jetson").start()

    def end(self, token: object) -> EnergyReading:
        assert isinstance(token, PowerSampler), "end() takes the token begin() returned"
        joules, samples, seconds = token.stop()
        if samples < MIN_SAMPLES:
            raise WindowTooShortError(
                f"the Jetson rails were sampled only {samples} times in the {seconds * 1000:.1f} ms window "
                f"(one sample every {self._interval * 1000:g} ms)",
                hint=f"measure windows of at least {self.min_window_s:g} s")
        total = joules[BOARD_RAIL] if self._board else sum(joules.values())
        if total <= 0:
            self._zero_windows += 1
            which = f"the Jetson rail {BOARD_RAIL}" if self._board else "every Jetson rail (" + ", ".join(
                r.label for r in self.rails) + ")"
            what = f"{which} read 0 W in all {samples} samples of the {seconds * 1000:.1f} ms window"
            if self._zero_windows >= ZERO_WINDOWS:
                raise MeterUnavailableError(
                    f"{what}, {self._zero_windows} windows in a row: the power monitor does not report",
                    hint="check the rail under load (`cat` its currN_input), or use the estimate meter")
            raise WindowTooShortError(f"{what}: no power was recorded",
                                      hint=f"measure windows of at least {self.min_window_s:g} s")
        self._zero_windows = 0
        return EnergyReading(joules, total, seconds, samples)

    def close(self) -> None:
        """Nothing to release: each window's sampler thread stops in :meth:`end`."""


def open(root: Path = I2C_DRIVERS, sample_interval_s: float = 0.02) -> JetsonMeter:
    """Open every INA3221 rail under ``root``; raises ``MeterUnavailableError`` with the fix if unreadable."""
    status = probe(root)
    if not status.readable:
        raise MeterUnavailableError(status.detail, hint=status.fix)
    found = channels(root)
    if not found:
        raise MeterUnavailableError(
            "the INA3221 monitors have no inN_label / inN_input / currN_input channels",
            hint="use JetPack 5 or later (its ina3221 hwmon driver), or the estimate meter")
    return JetsonMeter(found, sample_interval_s)


def probe(root: Path = I2C_DRIVERS) -> MeterStatus:
    """Are INA3221 rails present and readable under ``root``?"""
    found = rails(root)
    if not found:
        return MeterStatus("jetson", False, "no INA3221 power monitor (this is not a Jetson board)",
                           "run on a Jetson (Orin, Xavier) with its ina3221 driver loaded")
    labels = []
    for hw in found:
        for label in sorted(hw.glob("in*_label")):
            try:
                labels.append(label.read_text().strip())
            except PermissionError:
                return MeterStatus("jetson", False, f"{label} is not readable",
                                   f"grant read access: `sudo chmod a+r {hw}/*`")
    return MeterStatus("jetson", True, "rails: " + ", ".join(labels))


def from_options(options: MeterOptions) -> JetsonMeter:
    """The registry's opener: the Jetson rails take no options."""
    return open()
