"""Deployment targets: one TOML file per device, saying how to run and measure a model there.

A target names the ONNX Runtime execution providers (in priority order, with their provider options),
the session's thread count, the power meter(s), the grid's carbon intensity, the INT8 quantization
preset and the channel multiple that pruning rounds to. Built-in targets live in the repository's
``targets/`` folder (see ``targets/README.md`` for the schema); any other ``.toml`` file can be given by
path. :func:`toolchain.targets.host.usable` says whether a target can run on this machine and, if not, why and how to fix it.

Importing this module is cheap: onnxruntime and the meters are imported only when probed, and loading
a file reads :data:`toolchain.targets.presets.PRESETS` to check the preset name.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError
from toolchain.core.host import ARCH_ALIASES

if TYPE_CHECKING:  # pragma: no cover
    pass

# The built-in targets: the repository's targets/ folder, next to the package (an editable install,
# `pip install -e .`, which is how this project is installed). A wheel does not carry it.
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "targets"

KNOWN_ARCHES = ("x86_64", "aarch64", "armv7l", "riscv64", "ppc64le", "s390x")

# How to get an execution provider into this onnxruntime build (the wheels are exclusive: uninstall first).
PROVIDER_FIXES = {
    "CUDAExecutionProvider": "pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
                             "(needs an NVIDIA GPU with its driver, CUDA and cuDNN)",
    "TensorrtExecutionProvider": "pip uninstall -y onnxruntime && pip install onnxruntime-gpu, and install "
                                 "TensorRT so its libraries are on the library path (needs an NVIDIA GPU)",
    # OpenVINO's CPU plugin is not Intel-only: it runs on this project's AMD EPYC machines
    "OpenVINOExecutionProvider": "pip uninstall -y onnxruntime && pip install onnxruntime-openvino "
                                 "(x86-64 CPUs; Intel GPUs and NPUs)",
    "ROCMExecutionProvider": "install AMD's ROCm build of onnxruntime (needs an AMD GPU with ROCm)",
    "MIGraphXExecutionProvider": "install AMD's MIGraphX build of onnxruntime (needs an AMD GPU with ROCm)",
    "DmlExecutionProvider": "pip install onnxruntime-directml (Windows only)",
    "CoreMLExecutionProvider": "use the onnxruntime wheel for macOS (Apple hardware only)",
    "QNNExecutionProvider": "pip install onnxruntime-qnn (Qualcomm Snapdragon only)",
    "XnnpackExecutionProvider": "use an onnxruntime build with XNNPACK (built with --use_xnnpack)",
}
FIX_GPU_ON_ARM64 = ("on a Jetson, install NVIDIA's onnxruntime-gpu wheel for your JetPack release (Jetson Zoo); "
                    "on an ARM server with an NVIDIA GPU, pip install onnxruntime-gpu")

_TOP_KEYS = {"name", "description", "quantization_preset", "round_to", "requires", "session", "providers",
             "meter", "carbon"}
_TABLE_KEYS = {
    "requires": {"arch", "cpu_flags"},
    "session": {"intra_op_threads"},
    "meter": {"names", "idle_seconds"},
    "carbon": {"intensity_g_per_kwh", "source"},
}
_PROVIDER_KEYS = {"name", "options"}

# Sane ranges of the numbers in a target file (documented in targets/README.md). Every number must also be
# finite: TOML has nan and inf, which would reach costs.json (invalid JSON) or overflow a timer.
ROUND_TO_RANGE = (1, 1024)                # channel multiple for pruning
THREADS_RANGE = (0, 1024)                 # session.intra_op_threads; usable() also holds it to this host's cores
IDLE_SECONDS_RANGE = (0.0, 600.0)         # meter.idle_seconds, inclusive
INTENSITY_RANGE = (0.0, 5000.0)           # carbon.intensity_g_per_kwh, exclusive at both ends (gCO2e/kWh)

# The provider options each execution provider accepts, from ONNX Runtime's documentation of it
# (onnxruntime.ai/docs/execution-providers). ONNX Runtime ignores a misspelt option silently, so an option
# not listed here is an error. Providers without an entry pass their options through unchecked.
PROVIDER_OPTIONS: dict[str, frozenset[str]] = {
    "CPUExecutionProvider": frozenset({"use_arena"}),
    "CUDAExecutionProvider": frozenset({
        "device_id", "user_compute_stream", "has_user_compute_stream", "do_copy_in_default_stream",
        "use_ep_level_unified_stream", "gpu_mem_limit", "arena_extend_strategy", "cudnn_conv_algo_search",
        "cudnn_conv_use_max_workspace", "cudnn_conv1d_pad_to_nc1d", "enable_cuda_graph",
        "enable_skip_layer_norm_strict_mode", "prefer_nhwc", "use_tf32", "sdpa_kernel", "fuse_conv_bias",
        "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
        "gpu_external_alloc", "gpu_external_free", "gpu_external_empty_cache"}),
    "TensorrtExecutionProvider": frozenset({
        "device_id", "user_compute_stream", "has_user_compute_stream", "trt_max_workspace_size",
        "trt_max_partition_iterations", "trt_min_subgraph_size", "trt_fp16_enable", "trt_bf16_enable",
        "trt_int8_enable", "trt_int8_calibration_table_name", "trt_int8_use_native_calibration_table",
        "trt_dla_enable", "trt_dla_core", "trt_dump_subgraphs", "trt_engine_cache_enable", "trt_engine_cache_path",
        "trt_engine_cache_prefix", "trt_engine_decryption_enable", "trt_engine_decryption_lib_path",
        "trt_force_sequential_engine_build", "trt_context_memory_sharing_enable", "trt_layer_norm_fp32_fallback",
        "trt_timing_cache_enable", "trt_timing_cache_path", "trt_force_timing_cache", "trt_detailed_build_log",
        "trt_build_heuristics_enable", "trt_sparsity_enable", "trt_builder_optimization_level",
        "trt_auxiliary_streams", "trt_tactic_sources", "trt_extra_plugin_lib_paths", "trt_profile_min_shapes",
        "trt_profile_max_shapes", "trt_profile_opt_shapes", "trt_cuda_graph_enable", "trt_dump_ep_context_model",
        "trt_ep_context_file_path", "trt_ep_context_embed_mode", "trt_weight_stripped_engine_enable",
        "trt_onnx_model_folder_path", "trt_engine_hw_compatible", "trt_op_types_to_exclude"}),
    "OpenVINOExecutionProvider": frozenset({
        "device_type", "device_id", "precision", "num_of_threads", "num_streams", "cache_dir", "context",
        "enable_opencl_throttling", "enable_qdq_optimizer", "disable_dynamic_shapes", "enable_dynamic_shapes",
        "model_priority", "load_config", "enable_npu_fast_compile", "enable_causallm", "device_luid",
        "reshape_input", "layout"}),
}
# Numeric provider options with a range of their own (inclusive); thread counts are also held to this
# host's cores when the target is checked for use here. Other numbers need only be finite.
_OPTION_RANGES: dict[str, tuple[int, int]] = {
    "device_id": (0, 255), "num_of_threads": (0, 1024), "num_streams": (1, 1024), "trt_dla_core": (0, 255),
    "trt_builder_optimization_level": (0, 5), "trt_auxiliary_streams": (-1, 1024),
    "trt_max_partition_iterations": (1, 1_000_000), "trt_min_subgraph_size": (1, 1_000_000),
}


@dataclass(frozen=True)
class ProviderSpec:
    """An execution provider (ONNX Runtime's full name, e.g. ``CUDAExecutionProvider``) and the
    provider options it gets, as written in the TOML file (strings, numbers, booleans)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def short(self) -> str:
        """``CUDAExecutionProvider`` -> ``CUDA``."""
        return self.name.removesuffix("ExecutionProvider")


@dataclass(frozen=True)
class Target:
    """A deployment target loaded from a TOML file (see ``targets/README.md``).

    ``providers`` in priority order; ``threads``: intra-op threads (0: ONNX Runtime's default);
    ``meters``: power meter names in order of preference; ``idle_seconds``: idle baseline measured
    before a run; ``carbon_g_per_kwh``: grid carbon intensity (gCO2e/kWh) and ``carbon_source`` where it
    comes from; ``quant_preset``: a :data:`toolchain.targets.presets.PRESETS` name; ``round_to``: channel
    multiple for hardware-friendly pruning; ``requires_arch`` / ``requires_cpu_flags``: what the host
    must have (None / empty: anything)."""

    name: str
    description: str
    path: Path | None
    providers: tuple[ProviderSpec, ...]
    threads: int
    meters: tuple[str, ...]
    idle_seconds: float
    carbon_g_per_kwh: float
    carbon_source: str
    quant_preset: str
    round_to: int
    requires_arch: str | None = None
    requires_cpu_flags: tuple[str, ...] = ()

    def provider_names(self) -> list[str]:
        """Full ONNX Runtime provider names, in priority order (``providers=`` of ``create_session``)."""
        return [p.name for p in self.providers]

    def provider_options(self) -> list[dict[str, str]]:
        """One dict per provider, aligned with :meth:`provider_names` (``provider_options=`` of
        ``create_session``). Values become strings as ONNX Runtime wants them; booleans become
        ``"true"``/``"false"``, which every provider's option parser accepts."""
        return [{str(k): _option_text(v) for k, v in p.options.items()} for p in self.providers]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (as ``toolchain targets --json`` prints it)."""
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path) if self.path else None,
            "providers": [{"name": p.name, "options": dict(p.options)} for p in self.providers],
            "threads": self.threads,
            "meters": list(self.meters),
            "idle_seconds": self.idle_seconds,
            "carbon": {"intensity_g_per_kwh": self.carbon_g_per_kwh, "source": self.carbon_source},
            "quantization_preset": self.quant_preset,
            "round_to": self.round_to,
            "requires": {"arch": self.requires_arch, "cpu_flags": list(self.requires_cpu_flags)},
        }


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --------------------------------------------------------------------------------------------- loading


def builtin_dir() -> Path:
    """The folder of built-in targets; raises when this installation has none."""
    if not BUILTIN_DIR.is_dir():
        raise ToolchainError(f"built-in targets folder {BUILTIN_DIR} is missing",
                             hint="install the toolchain from its source tree with `pip install -e .`, "
                                  "or give a target as a path to a .toml file")
    return BUILTIN_DIR


def builtin_names() -> list[str]:
    """Names of the built-in targets (their file names without ``.toml``), sorted."""
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


def builtin_targets() -> list[Target]:
    """Every built-in target, sorted by name."""
    return [load_target_file(builtin_dir() / f"{name}.toml") for name in builtin_names()]


def load_target(spec: str | Path) -> Target:
    """A built-in target by name (``x86-cpu``), or any target file by path (``./my-board.toml``).

    ``spec`` is a path when it ends in ``.toml`` or contains a path separator; otherwise a built-in name."""
    text = str(spec)
    if isinstance(spec, Path) or text.endswith(".toml") or "/" in text or "\\" in text:
        return load_target_file(Path(text).expanduser())
    path = builtin_dir() / f"{text}.toml"
    if not path.is_file():
        raise ToolchainError(f"unknown target {text!r}",
                             hint=f"choose one of {', '.join(builtin_names())}, or give a path to a .toml file")
    return load_target_file(path)


def load_target_file(path: Path) -> Target:
    """Parse and validate one target file. Every problem raises :class:`ToolchainError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"{path}: no such target file" if not path.exists() else f"{path}: not a file")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ToolchainError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolchainError(f"{path}: cannot read it ({exc})") from None
    return _parse(data, path)


def _fail(path: Path, message: str, hint: str | None = None) -> ToolchainError:
    return ToolchainError(f"{path}: {message}", hint=hint)


def _check_keys(path: Path, table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r} in {where}", hint=f"allowed: {', '.join(sorted(allowed))}")


def _table(path: Path, data: dict, key: str, required: bool) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(path, f"missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"{key} must be a table ([{key}]), not {type(value).__name__}")
    _check_keys(path, value, _TABLE_KEYS[key], f"[{key}]")
    return value


def _string(path: Path, value: Any, where: str, *, required: bool = True, default: str = "") -> str:
    if value is None:
        if required:
            raise _fail(path, f"missing required key {where}")
        return default
    if not isinstance(value, str) or (required and not value.strip()):
        raise _fail(path, f"{where} must be a non-empty string, not {value!r}")
    return value


def _number(path: Path, value: Any, where: str, *, bounds: tuple[float, float], open_low: bool = False,
            open_high: bool = False, default: float | None = None) -> float:
    """A finite number within ``bounds`` (inclusive unless ``open_low`` / ``open_high``)."""
    if value is None:
        if default is None:
            raise _fail(path, f"missing required key {where}")
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"{where} must be a number, not {value!r}")
    low, high = bounds
    upper = f"{'<' if open_high else '<='} {high:g}"
    if not math.isfinite(value):
        raise _fail(path, f"{where} must be a finite number, not {value!r}")
    if value <= low if open_low else value < low:
        lower = ("must be positive" if open_low else "must not be negative") if low == 0 else \
            f"must be {'>' if open_low else '>='} {low:g}"
        raise _fail(path, f"{where} {lower} (and {upper}), not {value!r}")
    if value >= high if open_high else value > high:
        raise _fail(path, f"{where} must be {upper}, not {value!r}")
    return float(value)


def _integer(path: Path, value: Any, where: str, *, bounds: tuple[int, int], default: int) -> int:
    if value is None:
        return default
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, f"{where} must be an integer >= {low} and <= {high}, not {value!r}")
    return value


def _provider_options(path: Path, full: str, options: dict, where: str) -> dict[str, Any]:
    """The options of one [[providers]] block: names the provider accepts (:data:`PROVIDER_OPTIONS`),
    values that are strings, booleans or finite numbers within the option's range."""
    known = PROVIDER_OPTIONS.get(full)
    for key, value in options.items():
        if isinstance(value, dict | list) or value is None:
            raise _fail(path, f"option {key!r} in {where} must be a string, number or boolean, not {value!r}")
        if known is not None and key not in known:
            raise _fail(path, f"unknown option {key!r} in {where} ({full})",
                        hint=f"{full} accepts {', '.join(sorted(known))}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise _fail(path, f"option {key!r} in {where} must be a finite number, not {value!r}")
        if key in _OPTION_RANGES:
            low, high = _OPTION_RANGES[key]
            if not low <= value <= high:
                raise _fail(path, f"option {key!r} in {where} must be from {low} to {high}, not {value!r}")
    return dict(options)


def _strings(path: Path, value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, f"{where} must be a list of strings, not {value!r}")
    return tuple(value)


def _parse(data: dict, path: Path) -> Target:
    from toolchain.energy import METERS
    from toolchain.runtime.session import provider_name

    _check_keys(path, data, _TOP_KEYS, "the top level")
    name = _string(path, data.get("name"), "name")
    description = _string(path, data.get("description"), "description", required=False)
    preset = _string(path, data.get("quantization_preset"), "quantization_preset")
    presets = _preset_names()
    if preset not in presets:
        raise _fail(path, f"unknown quantization_preset {preset!r}", hint=f"choose one of {', '.join(presets)}")
    round_to = _integer(path, data.get("round_to"), "round_to", bounds=ROUND_TO_RANGE, default=8)

    requires = _table(path, data, "requires", required=False)
    arch = requires.get("arch")
    if arch is not None:
        arch = _string(path, arch, "requires.arch").lower()
        arch = ARCH_ALIASES.get(arch, arch)
        if arch not in KNOWN_ARCHES:
            raise _fail(path, f"unknown requires.arch {arch!r}", hint=f"use one of {', '.join(KNOWN_ARCHES)}")
    flags = tuple(f.lower() for f in _strings(path, requires.get("cpu_flags", []), "requires.cpu_flags"))

    session = _table(path, data, "session", required=False)
    threads = _integer(path, session.get("intra_op_threads"), "session.intra_op_threads", bounds=THREADS_RANGE,
                       default=0)

    raw_providers = data.get("providers")
    if raw_providers is None:
        raise _fail(path, "missing [[providers]]: at least one execution provider", hint='e.g. [[providers]] name = "cpu"')
    if not isinstance(raw_providers, list) or not raw_providers or not all(isinstance(p, dict) for p in raw_providers):
        raise _fail(path, "providers must be a non-empty array of tables ([[providers]] blocks)")
    providers = []
    for i, entry in enumerate(raw_providers, 1):
        where = f"[[providers]] #{i}"
        _check_keys(path, entry, _PROVIDER_KEYS, where)
        pname = _string(path, entry.get("name"), f"name in {where}")
        try:
            full = provider_name(pname)
        except ToolchainError as exc:
            raise _fail(path, f"{where}: {exc.message}", hint=exc.hint) from None
        if full in [p.name for p in providers]:
            raise _fail(path, f"{where}: {full} is listed twice")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise _fail(path, f"options in {where} must be a table, not {options!r}")
        providers.append(ProviderSpec(full, _provider_options(path, full, options, where)))

    meter = _table(path, data, "meter", required=True)
    if "names" not in meter:
        raise _fail(path, "missing required key meter.names", hint=f"a list of {', '.join(METERS)}")
    meters = _strings(path, meter["names"], "meter.names")
    if not meters:
        raise _fail(path, "meter.names is empty", hint=f"name at least one of {', '.join(METERS)}")
    for m in meters:
        if m not in METERS:
            raise _fail(path, f"unknown power meter {m!r} in meter.names", hint=f"choose from {', '.join(METERS)}")
    idle = _number(path, meter.get("idle_seconds"), "meter.idle_seconds", bounds=IDLE_SECONDS_RANGE, default=2.0)

    carbon = _table(path, data, "carbon", required=True)
    intensity = _number(path, carbon.get("intensity_g_per_kwh"), "carbon.intensity_g_per_kwh",
                        bounds=INTENSITY_RANGE, open_low=True, open_high=True)
    source = _string(path, carbon.get("source"), "carbon.source", required=False)

    return Target(name=name, description=description, path=path.resolve(), providers=tuple(providers),
                  threads=threads, meters=meters, idle_seconds=idle, carbon_g_per_kwh=intensity,
                  carbon_source=source, quant_preset=preset, round_to=round_to, requires_arch=arch,
                  requires_cpu_flags=flags)


def _preset_names() -> list[str]:
    from toolchain.targets.presets import PRESETS

    return list(PRESETS)


# --------------------------------------------------------------------------------------------- this host


