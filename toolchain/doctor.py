"""What this machine can run and measure: versions, CPU features, execution providers, power meters."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("toolchain", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "transformers",
            "torch-pruning", "numpy", "click", "rich", "nvidia-ml-py")
CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "asimddp": "ARM dot product",
             "i8mm": "ARM I8MM"}


@dataclass
class CpuInfo:
    """The CPU model, logical cores, and which INT8-relevant instruction sets it reports."""

    model: str
    cores: int
    machine: str
    features: dict[str, bool]


@dataclass
class DoctorReport:
    versions: dict[str, str | None]
    cpu: CpuInfo
    providers: list[dict[str, Any]]
    meters: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def versions() -> dict[str, str | None]:
    """Installed versions (None when missing), read from package metadata without importing anything."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Parse ``/proc/cpuinfo`` (x86 ``flags`` or ARM ``Features``)."""
    import os

    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    return CpuInfo(model=model, cores=os.cpu_count() or 1, machine=platform.machine(),
                   features={label: flag in flags for flag, label in CPU_FLAGS.items()})


def run_doctor() -> DoctorReport:
    """Probe everything. Importing onnxruntime happens here (and only here)."""
    from toolchain.energy import probe_all
    from toolchain.runtime import provider_statuses

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
