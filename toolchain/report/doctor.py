"""What this machine can run and measure: versions, CPU features, execution providers, power meters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolchain.core.host import CpuInfo, cpu_info, versions


@dataclass
class DoctorReport:
    versions: dict[str, str | None]
    cpu: CpuInfo
    providers: list[dict[str, Any]]
    meters: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_doctor() -> DoctorReport:
    """Probe everything. Importing onnxruntime happens here (and only here)."""
    from toolchain.energy import probe_all
    from toolchain.runtime.session import provider_statuses

    vers = versions()
    problems = []
    if vers.get("onnxruntime") and vers.get("onnxruntime-gpu"):
        problems.append("both onnxruntime and onnxruntime-gpu are installed and overwrite each other's files: "
                        "pip uninstall -y onnxruntime onnxruntime-gpu, then install one of them")
    try:
        providers = [asdict(p) for p in provider_statuses()]
    except ImportError:
        providers = []
        problems.append("onnxruntime is not installed: pip install 'toolchain[cpu]' (or [gpu] on NVIDIA machines)")
    meters = [asdict(m) for m in probe_all()]
    if not any(m["readable"] for m in meters):
        problems.append("no power meter is readable here: energy cannot be measured on this machine")
    return DoctorReport(versions=vers, cpu=cpu_info(), providers=providers, meters=meters, problems=problems)
