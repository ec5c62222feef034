"""Targets on this host: whether a target can run here (architecture, CPU flags, execution providers
that really run a session), its meters' status, and the default target (the one host rule of
:func:`toolchain.core.host.host_kind`)."""

from __future__ import annotations

import functools

from toolchain.core.errors import ToolchainError
from toolchain.core.host import HOST_KINDS, host_arch, host_cpu_flags, host_kind
from toolchain.energy.base import MeterStatus
from toolchain.runtime.session import ProviderStatus, check_threads
from toolchain.targets.target import FIX_GPU_ON_ARM64, PROVIDER_FIXES, Target


@functools.lru_cache(maxsize=1)
def _cached_provider_statuses() -> tuple[ProviderStatus, ...]:
    from toolchain.runtime.session import provider_statuses

    return tuple(provider_statuses())


def _provider_fix(name: str, arch: str) -> str:
    if arch == "aarch64" and name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        return FIX_GPU_ON_ARM64
    return PROVIDER_FIXES.get(name, "install an onnxruntime build that includes it")


def _providers_problem(target: Target, statuses: list[ProviderStatus], arch: str) -> str | None:
    """One line for the target's providers that do not run here (None when all do)."""
    by_name = {s.name: s for s in statuses}
    absent = [p.name for p in target.providers if p.name not in by_name]
    broken = [by_name[p.name] for p in target.providers if p.name in by_name and not by_name[p.name].usable]
    parts = []
    if absent:
        have = ", ".join(s.name.removesuffix("ExecutionProvider") for s in statuses) or "none"
        verb = "is" if len(absent) == 1 else "are"
        parts.append(f"{' and '.join(absent)} {verb} not in this onnxruntime build (it has {have}): "
                     f"{_provider_fix(absent[0], arch)}")
    for status in broken:
        parts.append(f"{status.name} does not run here ({status.reason or 'the session fell back to CPU'}): "
                     f"{_provider_fix(status.name, arch)}")
    return "; ".join(parts) or None


def threads_problem(target: Target) -> str | None:
    """One line when the target asks for more threads than this machine has cores (its session's
    ``intra_op_threads``, or a provider's ``num_of_threads`` option); None when it does not."""
    counts = [("session.intra_op_threads", target.threads)]
    counts += [(f"option num_of_threads of {p.short}", p.options["num_of_threads"]) for p in target.providers
               if isinstance(p.options.get("num_of_threads"), int) and not isinstance(p.options["num_of_threads"], bool)]
    for where, count in counts:
        try:
            check_threads(count, where)
        except ToolchainError as exc:
            return str(exc)
    return None


def usable(target: Target, *, statuses: list[ProviderStatus] | None = None, arch: str | None = None,
           cpu_flags: set[str] | None = None) -> tuple[bool, str]:
    """Can ``target`` run on this machine? ``(True, "")``, or ``(False, reason)`` where the reason is one
    line naming what is missing and how to fix it. Checks the architecture, the required CPU flags, that
    its thread counts do not exceed this machine's cores, and that every execution provider really runs a session here (``runtime.provider_statuses``, cached).
    Power meters are not checked (see :func:`meter_statuses`). The keyword arguments stand in for this
    machine in tests."""
    arch = arch or host_arch()
    if target.requires_arch and target.requires_arch != arch:
        return False, f"needs an {target.requires_arch} CPU; this machine is {arch}"
    if target.requires_cpu_flags:
        flags = cpu_flags if cpu_flags is not None else host_cpu_flags()
        if flags is None:
            return False, (f"needs CPU flags {', '.join(target.requires_cpu_flags)}, "
                           "and this machine's cannot be read (no /proc/cpuinfo)")
        missing = [f for f in target.requires_cpu_flags if f not in flags]
        if missing:
            return False, f"this CPU lacks {', '.join(missing)}"
    problem = threads_problem(target)
    if problem:
        return False, problem
    if statuses is None:
        try:
            statuses = list(_cached_provider_statuses())
        except ImportError:
            return False, "onnxruntime is not installed: pip install 'toolchain[cpu]' (or [gpu] on NVIDIA machines)"
    problem = _providers_problem(target, statuses, arch)
    return (False, problem) if problem else (True, "")


def meter_statuses(target: Target) -> list[MeterStatus]:
    """Each of the target's meters probed on this machine (readable or not, and the fix), in order.
    The profile command decides what to do when none is readable."""
    from toolchain.energy import METERS

    return [METERS[name].probe() for name in target.meters]  # names were checked against METERS on load


def default_target_name() -> str:
    """The built-in CPU target matching this host (the default of ``profile`` and ``compare``): ``x86-vnni``
    with AVX512-VNNI, ``x86-cpu`` on other x86-64, ``arm64-cpu`` on aarch64. The same rule
    (:func:`toolchain.core.host.host_kind`) picks the default INT8 preset, so the two always agree."""
    return HOST_KINDS[host_kind()][0]
