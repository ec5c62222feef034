"""What this machine can run and measure: versions, CPU features, the onnxruntime build, execution
providers, power meters."""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from toolchain.core.host import ORT_DISTRIBUTIONS, CpuInfo, cpu_info, versions


@dataclass
class DoctorReport:
    versions: dict[str, str | None]
    cpu: CpuInfo
    providers: list[dict[str, Any]]
    meters: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    # the onnxruntime build(s) installed: onnxruntime_build()
    onnxruntime_build: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_distributions() -> dict[str, str]:
    """Every onnxruntime build installed (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-openvino``:
    they all install the one ``onnxruntime`` module), name -> version, from package metadata (nothing is
    imported)."""
    found = {}
    for name in ORT_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def onnxruntime_build(providers: list[str] | None = None) -> dict[str, Any]:
    """Which onnxruntime build this is: ``distribution`` (the package that installed the module, from
    ``importlib.metadata``; with two installed, the one whose name the module's own build info gives),
    ``version``, ``installed`` (every build found, name -> version) and, where the OpenVINO provider is in
    ``providers`` (the build's available providers), ``openvino``: :func:`openvino_devices`. Empty
    ``distribution`` when no build is installed."""
    installed = ort_distributions()
    distribution = next(iter(installed), None)
    if len(installed) > 1:  # the module is whichever was installed last: ask it
        try:
            from onnxruntime.capi import build_and_package_info as info

            distribution = info.package_name if info.package_name in installed else distribution
        except (ImportError, AttributeError):
            pass
    build: dict[str, Any] = {"distribution": distribution, "version": installed.get(distribution or ""),
                             "installed": installed}
    if providers and "OpenVINOExecutionProvider" in providers:
        build["openvino"] = openvino_devices()
    return build


def openvino_devices() -> dict[str, Any]:
    """The OpenVINO runtime inside onnxruntime-openvino and its devices, asked cheaply (~0.3 s; no model is
    compiled): ``devices`` (the device ids the execution provider reports, e.g. ``["CPU"]``), and through
    OpenVINO's C API, which the wheel ships beside the provider (``libopenvino_c``), ``version`` and per
    device its ``FULL_DEVICE_NAME`` and ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32 INT8 BIN``: no FP16 or
    BF16 on this CPU). What cannot be read is left out, with ``error`` saying why."""
    out: dict[str, Any] = {}
    try:
        from onnxruntime.capi import _pybind_state as C

        out["devices"] = list(C.get_available_openvino_device_ids())
    except Exception as exc:  # a build without the OpenVINO provider, or an older one
        out["error"] = f"the execution provider lists no devices ({type(exc).__name__})"
        return out
    try:
        out.update(_openvino_c_properties(out["devices"]))
    except Exception as exc:  # OSError (no library), AttributeError (a symbol missing in this version)
        out["error"] = f"OpenVINO's C API could not be read ({type(exc).__name__}: {exc})"
    return out


def _openvino_c_properties(devices: list[str]) -> dict[str, Any]:
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    path = next(iter(sorted(capi.glob("libopenvino_c.so*")) or sorted(capi.glob("openvino_c*.dll"))), None)
    if path is None:
        raise OSError(f"no libopenvino_c in {capi}")
    lib = ctypes.CDLL(str(path))

    class Version(ctypes.Structure):
        _fields_ = [("buildNumber", ctypes.c_char_p), ("description", ctypes.c_char_p)]

    lib.ov_core_create.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.ov_core_get_property.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.POINTER(ctypes.c_void_p)]
    lib.ov_free.argtypes = [ctypes.c_void_p]
    lib.ov_core_free.argtypes = [ctypes.c_void_p]
    result: dict[str, Any] = {}
    version = Version()
    if lib.ov_get_openvino_version(ctypes.byref(version)) == 0 and version.buildNumber:
        result["version"] = version.buildNumber.decode(errors="replace")
    core = ctypes.c_void_p()
    if lib.ov_core_create(ctypes.byref(core)) != 0:
        raise OSError("ov_core_create failed")
    try:
        names = {}
        for device in devices:
            props = {}
            for key in ("FULL_DEVICE_NAME", "OPTIMIZATION_CAPABILITIES"):
                value = ctypes.c_void_p()
                if lib.ov_core_get_property(core, device.encode(), key.encode(), ctypes.byref(value)) == 0 and value:
                    props[key.lower()] = ctypes.string_at(value).decode(errors="replace").strip()
                    lib.ov_free(value)
            names[device] = props
        result["device_properties"] = names
    finally:
        lib.ov_core_free(core)
    return result


def run_doctor() -> DoctorReport:
    """Probe everything. Importing onnxruntime happens here (and only here)."""
    from toolchain.energy import probe_all
    from toolchain.runtime.session import provider_statuses

    vers = versions()
    installed = ort_distributions()
    for name, version in installed.items():  # onnxruntime-openvino is not in core.host.PACKAGES
        vers[name] = version
    problems = []
    if len(installed) > 1:
        names = sorted(installed)
        problems.append(f"{' and '.join(names)} are {'both' if len(names) == 2 else 'all'} installed and overwrite each other's files (one "
                        f"`onnxruntime` module): pip uninstall -y {' '.join(names)}, then install one of them")
    try:
        providers = [asdict(p) for p in provider_statuses()]
    except ImportError:
        providers = []
        problems.append("onnxruntime is not installed: pip install 'toolchain[cpu]' (or [gpu] on NVIDIA machines)")
    build = onnxruntime_build([p["name"] for p in providers]) if providers else onnxruntime_build()
    meters = [asdict(m) for m in probe_all()]
    if not any(m["readable"] for m in meters):
        problems.append("no power meter is readable here: energy cannot be measured on this machine")
    return DoctorReport(versions=vers, cpu=cpu_info(), providers=providers, meters=meters, problems=problems,
                        onnxruntime_build=build)
