"""NVIDIA Jetson power rails: the INA3221 monitors the board exposes through hwmon."""

from __future__ import annotations

from pathlib import Path

from toolchain.energy import MeterStatus

I2C_DRIVERS = Path("/sys/bus/i2c/drivers")


def rails(root: Path = I2C_DRIVERS) -> list[Path]:
    """hwmon directories of INA3221 monitors (``ina3221`` on JetPack 5+, ``ina3221x`` before)."""
    found: list[Path] = []
    for driver in ("ina3221", "ina3221x"):
        found += sorted((root / driver).glob("*/hwmon/hwmon*")) if (root / driver).is_dir() else []
    return found


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
