"""This machine: one ``/proc/cpuinfo`` parser, the architecture, installed versions, and the ONE rule that
picks this host's kind of CPU (which built-in CPU target and INT8 preset fit it).

Everything that asks about the CPU (``doctor``, target requirements, the estimate meter's TDP lookup, the
default target and the default quantization preset) reads it through :func:`read_cpuinfo`.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
PACKAGES = ("toolchain", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "transformers",
            "torch-pruning", "numpy", "click", "rich", "nvidia-ml-py")
# the onnxruntime builds that install the `onnxruntime` module, in the order a version is looked for
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "asimddp": "ARM dot product",
             "i8mm": "ARM I8MM"}
# platform.machine() spellings -> the Linux names the TOML files use
ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64",
                "armv8": "aarch64"}


def read_cpuinfo(cpuinfo: Path = CPUINFO) -> dict[str, str] | None:
    """The fields of ``cpuinfo`` (keys lower-cased, the first occurrence of each: the first core), or None
    when it cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for key, value in re.findall(r"^([^:\n]+?)\s*:[ \t]*(.*)$", text, flags=re.M):
        fields.setdefault(key.strip().lower(), value.strip())
    return fields


def flags_of(fields: dict[str, str]) -> set[str]:
    """The feature flags of parsed cpuinfo fields (x86 ``flags``, ARM ``Features``), lower case."""
    return set((fields.get("flags") or fields.get("features") or "").lower().split())


@dataclass
class CpuInfo:
    """The CPU model, logical cores, and which INT8-relevant instruction sets it reports."""

    model: str
    cores: int
    machine: str
    features: dict[str, bool]


def cpu_info(cpuinfo: Path = CPUINFO) -> CpuInfo:
    """This CPU as ``toolchain doctor`` reports it (x86 ``flags`` or ARM ``Features``)."""
    fields = read_cpuinfo(cpuinfo) or {}
    model = next((fields[k] for k in ("model name", "hardware", "cpu model") if fields.get(k)), "")
    model = model or platform.processor() or platform.machine()
    flags = flags_of(fields)
    return CpuInfo(model=model, cores=os.cpu_count() or 1, machine=platform.machine(),
                   features={label: flag in flags for flag, label in CPU_FLAGS.items()})


def host_arch() -> str:
    """This machine's architecture with Linux spelling: ``x86_64`` or ``aarch64`` (or as reported)."""
    machine = platform.machine()
    return ARCH_ALIASES.get(machine.lower(), machine)


def host_cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags as spelled in ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``);
    None when they cannot be read (not Linux)."""
    fields = read_cpuinfo(cpuinfo)
    return None if fields is None else flags_of(fields)


# The one host rule. Kinds: "x86-vnni" (AVX512-VNNI: what the built-in x86-vnni target requires; a CPU
# with only AVX-VNNI gets "x86", as the x86-vnni target would be unusable on it), "x86", "arm64".
HOST_KINDS = {"x86-vnni": ("x86-vnni", "x86-vnni"), "x86": ("x86-cpu", "x86"), "arm64": ("arm64-cpu", "arm64")}


def host_kind(arch: str | None = None, cpu_flags: set[str] | None = None) -> str:
    """This host's kind of CPU: ``x86-vnni``, ``x86`` or ``arm64`` (``arch`` and ``cpu_flags`` stand in
    for this machine in tests). :data:`HOST_KINDS` maps it to the default target and INT8 preset."""
    arch = arch or host_arch()
    if arch == "aarch64":
        return "arm64"
    flags = cpu_flags if cpu_flags is not None else (host_cpu_flags() or set())
    return "x86-vnni" if "avx512_vnni" in flags else "x86"


def versions() -> dict[str, str | None]:
    """Installed versions (None when missing), read from package metadata without importing anything."""
    return {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}}


def provenance_versions() -> dict[str, str | None]:
    """The versions a measurement records (toolchain, onnxruntime of whichever build is installed, onnx,
    python, machine)."""
    ort = next((found for name in ORT_DISTRIBUTIONS if (found := _version(name))), None)
    return {"toolchain": _version("toolchain"), "onnxruntime": ort, "onnx": _version("onnx"),
            "python": platform.python_version(), "machine": platform.machine()}


def onnxruntime_build() -> dict[str, Any]:
    """The onnxruntime build installed here: its distribution (``onnxruntime``, ``onnxruntime-gpu``,
    ``onnxruntime-openvino``), version and execution providers (onnxruntime is imported only here)."""
    for name in ORT_DISTRIBUTIONS:
        version = _version(name)
        if version is None:
            continue
        try:
            import onnxruntime

            providers = list(onnxruntime.get_available_providers())
        except ImportError:
            providers = []
        return {"distribution": name, "version": version, "providers": providers}
    return {"distribution": None, "version": None, "providers": []}


def gpu_model() -> str | None:
    """The first NVIDIA GPU's name (``nvidia-smi``, two seconds at most), or None where there is none."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: host name, CPU model and its INT8-relevant flags, cores, GPU
    model, the onnxruntime build, Python (every cost table records it)."""
    import socket

    cpu = cpu_info()
    return {"hostname": socket.gethostname(), "cpu": cpu.model,
            "cpu_flags": [label for label, has in cpu.features.items() if has], "cores": cpu.cores,
            "gpu": gpu_model(), "onnxruntime": onnxruntime_build(), "python": platform.python_version(),
            "machine": platform.machine()}


def describe_machine(info: dict[str, Any] | None) -> str:
    """``host vm, AMD EPYC (AVX2), no GPU, onnxruntime-openvino 1.24.1 (OpenVINO, CPU), Ray node 1a2b3c4d at
    127.0.0.1``: a :func:`machine_info` (and a Ray node's id and address, when it has them) in one line."""
    if not info:
        return "machine not recorded"
    ort = info.get("onnxruntime") or {}
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in ort.get("providers") or [])
    flags = ", ".join(info.get("cpu_flags") or [])
    parts = [f"host {info.get('hostname')}", f"{info.get('cpu')}" + (f" ({flags})" if flags else ""),
             f"GPU {info['gpu']}" if info.get("gpu") else "no GPU",
             f"{ort.get('distribution')} {ort.get('version')}" + (f" ({providers})" if providers else "")]
    if info.get("node_id"):
        parts.append(f"Ray node {str(info['node_id'])[:8]} at {info.get('address')}")
    return ", ".join(parts)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
