"""TODO docstring."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

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


# platform.machine() spellings -> the Linux names the TOML files use
ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
                "armv8": "aarch64"}


def host_arch() -> str:
    """This machine's architecture with Linux spelling: ``x86_64`` or ``aarch64`` (or as reported)."""
    machine = platform.machine()
    return ARCH_ALIASES.get(machine.lower(), machine)


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags as spelled in ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``);
    None when they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return None
