"""NVIDIA GPUs through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package)."""

from __future__ import annotations

from types import ModuleType

from toolchain.energy import MeterStatus


def probe(pynvml: ModuleType | None = None) -> MeterStatus:
    """Can NVML be initialised, and which GPUs does it see? ``pynvml`` may be a fake module in tests."""
    if pynvml is None:
        try:
            import pynvml as real
        except ImportError:
            return MeterStatus("nvml", False, "the pynvml module is not installed",
                               "pip install nvidia-ml-py (or toolchain[gpu]); not the deprecated `pynvml` package")
        pynvml = real
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return MeterStatus("nvml", False, f"NVML cannot initialise ({type(exc).__name__}: {exc})",
                           "this needs an NVIDIA GPU with its driver loaded (`nvidia-smi` must work)")
    try:
        count = pynvml.nvmlDeviceGetCount()
        gpus = []
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(name.decode() if isinstance(name, bytes) else str(name))
    finally:
        pynvml.nvmlShutdown()
    if not gpus:
        return MeterStatus("nvml", False, "NVML sees no GPU", "check `nvidia-smi`")
    return MeterStatus("nvml", True, f"{len(gpus)} GPU(s): " + ", ".join(gpus))
