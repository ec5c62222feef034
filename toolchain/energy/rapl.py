"""Intel/AMD RAPL through the powercap sysfs tree (``/sys/class/powercap/intel-rapl:N``)."""

from __future__ import annotations

from pathlib import Path

from toolchain.energy import MeterStatus

POWERCAP_ROOT = Path("/sys/class/powercap")
GRANT_READ = ("grant read access as root: `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
              "/sys/class/powercap/intel-rapl:*/*/energy_uj` (or a udev rule to keep it across reboots)")


def zones(root: Path = POWERCAP_ROOT) -> list[Path]:
    """Top-level RAPL zones (one per package/socket) and their subzones (core, uncore, dram)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("intel-rapl:*") if (p / "energy_uj").exists())


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
