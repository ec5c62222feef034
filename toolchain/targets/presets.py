"""INT8 quantization presets, one per kind of target: :class:`QuantConfig` (one configuration) and
:class:`QuantPreset` (a target's static, transformer and ``--auto`` candidate configurations). Plain
dataclasses: quantize/ turns them into ONNX Runtime calls."""

from __future__ import annotations

from dataclasses import dataclass, replace

from toolchain.core.errors import ToolchainError
from toolchain.core.host import HOST_KINDS, host_kind

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    """One INT8 configuration. ``mode``: ``static`` (calibrated activations) or ``dynamic`` (int8 weights,
    activation ranges computed at run time). ``fmt``: ``qdq`` or ``qoperator``. ``activations`` and
    ``weights``: ``uint8`` or ``int8``. ``exclude``: node names kept in FP32."""

    mode: str = "static"
    fmt: str = "qdq"
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    calibration: str = "minmax"
    percentile: float = 99.999
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None  # None: every op ORT can quantize
    adaround: bool = False  # static QDQ: learned rounding of the int8 weights, fitted on the calibration set
    bias_correction: bool = False  # static QDQ: empirical bias correction, on the calibration set

    @property
    def label(self) -> str:
        """Short name, e.g. ``static QDQ U8S8 per-channel minmax`` or ``dynamic S8 per-channel``."""
        a = "U8" if self.activations == "uint8" else "S8"
        w = "S8" if self.weights == "int8" else "U8"
        pc = "per-channel" if self.per_channel else "per-tensor"
        if self.mode == "dynamic":
            return f"dynamic {w} {pc}" + (" reduce-range" if self.reduce_range else "")
        extras = [x for x, on in (("reduce-range", self.reduce_range), ("sym-act", self.symmetric_activations),
                                  ("adaround", self.adaround), ("bias-corrected", self.bias_correction)) if on]
        text = f"static {self.fmt.upper()} {a}{w} {pc} {self.calibration}"
        text += "".join(f" {x}" for x in extras)
        return text + (f" ({len(self.exclude)} nodes FP32)" if self.exclude else "")

    def validate(self) -> None:
        checks = [(self.mode in ("static", "dynamic"), f"mode must be static or dynamic, not {self.mode!r}"),
                  (self.fmt in ("qdq", "qoperator"), f"format must be qdq or qoperator, not {self.fmt!r}"),
                  (self.activations in ("uint8", "int8"), "activations must be uint8 or int8"),
                  (self.weights in ("uint8", "int8"), "weights must be uint8 or int8"),
                  (self.calibration in CALIBRATION_METHODS, f"calibration must be one of {', '.join(CALIBRATION_METHODS)}"),
                  (not (self.adaround or self.bias_correction) or (self.mode == "static" and self.fmt == "qdq"),
                   "AdaRound and bias correction apply to static QDQ quantization only")]
        for ok, message in checks:
            if not ok:
                raise ToolchainError(message)


@dataclass(frozen=True)
class QuantPreset:
    """A target's quantization defaults: ``static`` for CNNs, ``transformer`` for transformer models,
    and the ``candidates`` that ``--auto`` measures."""

    name: str
    description: str
    static: QuantConfig
    transformer: QuantConfig
    candidates: tuple[QuantConfig, ...]


_U8S8 = QuantConfig()


_S8S8 = QuantConfig(activations="int8")


_DYNAMIC = QuantConfig(mode="dynamic")


PRESETS: dict[str, QuantPreset] = {p.name: p for p in (
    QuantPreset("x86-vnni", "x86-64 CPU with AVX512-VNNI (CPU EP)", _U8S8, _DYNAMIC,
                (_U8S8, _S8S8, _DYNAMIC)),
    # Without VNNI, ORT's u8s8 kernels can saturate 16-bit intermediates; 7-bit weights avoid it. Measured
    # here (AVX2): same speed as full-range U8S8, higher fidelity (MNIST CNN cosine 0.99995 vs 0.9990).
    # transformers too: MiniLM dynamic INT8 (with outlier migration) reached cosine 0.9972 at 1.44x FP32
    # with 7-bit weights against 0.9959 at 1.41x with full-range int8 weights (AMD EPYC, AVX2, 1 thread)
    QuantPreset("x86", "x86-64 CPU without VNNI (AVX2; CPU EP)", replace(_U8S8, reduce_range=True),
                replace(_DYNAMIC, reduce_range=True),
                (replace(_U8S8, reduce_range=True), _U8S8, _S8S8, replace(_DYNAMIC, reduce_range=True), _DYNAMIC)),
    # OpenVINO EP (device CPU), measured 2026-12-02 on a 2-core AMD EPYC VM (AVX2, no VNNI; onnxruntime-openvino
    # 1.24.1, OpenVINO 2025.4.1), ResNet-50 layout, static QDQ MinMax on 98 crops of builtin:photos, fidelity
    # against FP32 (CPU EP) on 266 held-out crops of builtin:photos-test; benchmarks/bench_openvino.py --part
    # preset (40 interleaved runs, other processes on 25-39% of the CPUs). Every candidate ran at the same speed
    # within noise: 2.3-2.5x FP32 at batch 1, 2.1-2.3x at batch 8 (paired 95% CIs overlap). Fidelity decided:
    # cosine of the input-dependent part of the logits 0.973 for U8S8 per-channel, 0.971 per-tensor, 0.941 with
    # 7-bit weights (the x86 preset: OpenVINO gains nothing from them and loses fidelity), 0.721 with symmetric
    # S8 activations (the gpu preset; NNCF's "performance" advice does not pay off for ORT-written QDQ). U8 and
    # S8 activations give the same outputs on OpenVINO (0.9733 / 0.9729) and the same speed; U8 is kept for the
    # nodes that fall back to the CPU EP, where S8S8 runs no faster than FP32. enable_qdq_optimizer (documented
    # for the NPU) changed nothing on the CPU. Transformers: not measured on OpenVINO; the x86 CPU EP choice.
    QuantPreset("openvino", "x86-64 CPU through the OpenVINO EP (QDQ: OpenVINO runs the INT8 graph itself)",
                _U8S8, replace(_DYNAMIC, reduce_range=True),
                (_U8S8, replace(_U8S8, per_channel=False), replace(_U8S8, reduce_range=True),
                 replace(_DYNAMIC, reduce_range=True))),
    QuantPreset("arm64", "ARM64 CPU with dot-product instructions (CPU EP)", _S8S8, _DYNAMIC, (_S8S8, _U8S8, _DYNAMIC)),
    QuantPreset("gpu", "CUDA / TensorRT: symmetric int8 activations and weights (QDQ)",
                replace(_S8S8, symmetric_activations=True), replace(_S8S8, symmetric_activations=True),
                (replace(_S8S8, symmetric_activations=True),)),
)}


def host_preset() -> str:
    """The preset for this machine's CPU (``x86-vnni``, ``x86`` or ``arm64``): the preset of the default
    target, by the one host rule :func:`toolchain.core.host.host_kind`."""
    return HOST_KINDS[host_kind()][1]


def preset_reason(name: str | None, target: str | None = None) -> str:
    """Why the preset ``name`` (None: this machine's) applies, in one sentence for a report: the target
    that names it, or this machine's CPU and the instruction set that decides (AVX512-VNNI or not)."""
    from toolchain.core.host import cpu_info, host_cpu_flags

    chosen = preset(name)
    what = f"{chosen.name} ({chosen.description}; static default {chosen.static.label})"
    if target and target != chosen.name:
        return f"preset {what}: the quantization preset of target {target}"
    if name and name != host_preset():
        return f"preset {what}: asked for by name"
    cpu = cpu_info().model or "this CPU"
    flags = host_cpu_flags() or set()
    why = {"x86-vnni": "has AVX512-VNNI, so full-range U8S8 runs on VNNI dot products",
           "x86": ("has no AVX512-VNNI" + (" (AVX-VNNI only)" if "avx_vnni" in flags else "")
                   + ": U8S8 with 7-bit weights (reduce-range) avoids the 16-bit saturation of AVX2 u8s8 kernels"),
           "arm64": "is ARM64: S8S8 on the dot-product instructions"}[host_preset()]
    return f"preset {what}: {cpu} {why}"


def preset(name: str | None) -> QuantPreset:
    """A preset by name (None: this machine's)."""
    key = name or host_preset()
    if key not in PRESETS:
        raise ToolchainError(f"unknown quantization preset {key!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]
