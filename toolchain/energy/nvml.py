"""NVIDIA GPUs through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package).

Per GPU the meter reads the total energy counter ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules
since the driver loaded, Volta and later) at both ends of a window. The driver refreshes it only every
so often (20-100 ms depending on the GPU), so a window must be at least :data:`COUNTER_MIN_WINDOW_S`
long; a counter that did not advance raises :class:`WindowTooShortError`. GPUs without the counter
fall back to sampling ``nvmlDeviceGetPowerUsage`` (milliwatts) on a background thread and integrating
it (trapezoid rule). On Ampere (except GA100) and newer that power figure is itself a 1 s average, so
sampled readings of windows much shorter than 1 s are smoothed; prefer the counter.

No window reads as zero or less: a counter that goes backwards (driver reloaded) raises
:class:`CounterResetError`; a sampled GPU that read 0 W throughout a window raises
:class:`WindowTooShortError`, and ``MeterUnavailableError`` when it does so in :data:`ZERO_WINDOWS`
windows in a row (the power reading does not work). An NVML error after :func:`open` (GPU lost, driver
gone) raises ``MeterUnavailableError`` naming the GPU and the NVML error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from toolchain.core.errors import MeterUnavailableError, one_line
from toolchain.energy.base import (
    CounterResetError,
    EnergyReading,
    MeterOptions,
    MeterStatus,
    WindowTooShortError,
)

PIP_HINT = "pip install nvidia-ml-py (or toolchain[gpu]); not the deprecated `pynvml` package"
DRIVER_HINT = "this needs an NVIDIA GPU with its driver loaded (`nvidia-smi` must work)"
COUNTER_MIN_WINDOW_S = 0.1  # the energy counter refreshes about every 100 ms on many GPUs (Zeus, PETSc)
MIN_SAMPLES = 3  # first sample, at least one sample inside the window, last sample
ZERO_WINDOWS = 2  # consecutive all-zero windows of a sampled domain before it counts as broken


class PowerSampler:
    """Samples ``read()`` (watts per domain) at :meth:`start`, then every ``interval_s`` on a daemon
    thread until :meth:`stop`, which takes one last sample and integrates over ``time.perf_counter``
    timestamps (trapezoid rule). One sampler per window; the NVML and Jetson meters use it."""

    def __init__(self, read: Callable[[], dict[str, float]], interval_s: float, name: str) -> None:
        self.read, self.interval_s = read, interval_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}-power-sampler", daemon=True)

    def _sample(self) -> None:
        before = time.perf_counter()
        watts = self.read()
        self.samples.append(((before + time.perf_counter()) / 2, watts))

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self._sample()
        except Exception as exc:  # re-raised by stop() in the caller's thread
            self._error = exc

    def start(self) -> PowerSampler:
        self._sample()
        self._thread.start()
        return self

    def halt(self) -> None:
        """Stop the thread without a last sample or any result (the window is abandoned)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def stop(self) -> tuple[dict[str, float], int, float]:
        """Stop sampling; return (joules per domain, samples taken, seconds from first to last sample)."""
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._sample()
        joules = dict.fromkeys(self.samples[0][1], 0.0)
        for (t0, w0), (t1, w1) in zip(self.samples, self.samples[1:], strict=False):
            for domain in joules:
                joules[domain] += (w0[domain] + w1[domain]) / 2 * (t1 - t0)
        return joules, len(self.samples), self.samples[-1][0] - self.samples[0][0]


@dataclass
class _Window:
    start: float
    counters: dict[str, int]
    sampler: PowerSampler | None


class NvmlMeter:
    """Energy of one or more GPUs; domains ``gpu0``, ``gpu1`` ... (NVML indices)."""

    name = "nvml"
    measured = True

    def __init__(self, nvml: Any, handles: dict[str, Any], counter: set[str], models: dict[str, str],
                 sample_interval_s: float) -> None:
        self._nvml, self._handles, self._models = nvml, handles, models
        self._counter = [d for d in handles if d in counter]  # in device order, so errors name the first GPU
        self._sampled = [d for d in handles if d not in counter]
        self._interval = sample_interval_s
        self._closed = False
        self._zero_windows = dict.fromkeys(self._sampled, 0)
        sampled_min = (MIN_SAMPLES - 1) * sample_interval_s if self._sampled else 0.0
        self.min_window_s = max(COUNTER_MIN_WINDOW_S if counter else 0.0, sampled_min)
        how = {d: "energy counter" if d in counter else f"sampled power every {sample_interval_s * 1000:g} ms"
               for d in handles}
        self.source = "NVML: " + ", ".join(f"{d} {models[d]} ({how[d]})" for d in handles)

    def _call(self, what: str, fn: Callable[[Any], Any], d: str) -> Any:
        """``fn(handle of d)``, with an NVML error turned into one line naming the GPU."""
        try:
            return fn(self._handles[d])
        except Exception as exc:  # NVMLError (GPU lost, driver unloaded) or anything else the binding raises
            raise MeterUnavailableError(
                f"NVML failed reading the {what} of {d} ({self._models[d]}) during measurement: {one_line(exc)}",
                hint="check the GPU with `nvidia-smi`: a driver reset or a GPU off the bus needs "
                     "`sudo nvidia-smi -r` or a reboot; then measure again") from exc

    def _energy_mj(self) -> dict[str, int]:
        read = self._nvml.nvmlDeviceGetTotalEnergyConsumption
        return {d: int(self._call("energy counter", read, d)) for d in self._counter}

    def _power_w(self) -> dict[str, float]:
        read = self._nvml.nvmlDeviceGetPowerUsage
        watts = {d: self._call("power", read, d) / 1000.0 for d in self._sampled}
        for d, w in watts.items():
            if w < 0:
                raise MeterUnavailableError(f"NVML power of {d} ({self._models[d]}) read {w:g} W: a meter fault",
                                            hint="check `nvidia-smi -q -d POWER`, or use another meter")
        return watts

    def begin(self) -> _Window:
        start = time.perf_counter()  # before the sampler: its first sample and thread start are inside
        sampler = PowerSampler(self._power_w, self._interval, "nvml").start() if self._sampled else None
        try:
            return _Window(start, self._energy_mj(), sampler)
        except BaseException:
            if sampler is not None:
                sampler.halt()
            raise

    def end(self, token: object) -> EnergyReading:
        assert isinstance(token, _Window), "end() takes the token begin() returned"
        try:
            counters = self._energy_mj()
        except BaseException:
            if token.sampler is not None:
                token.sampler.halt()
            raise
        joules, samples = {}, 0
        if token.sampler is not None:
            joules, samples, _ = token.sampler.stop()
        seconds = time.perf_counter() - token.start  # the window holds the counter reads and every sample
        hint = f"measure windows of at least {self.min_window_s:g} s (repeat the workload inside one window)"
        if token.sampler is not None and samples < MIN_SAMPLES:
            raise WindowTooShortError(
                f"NVML power was sampled only {samples} times in the {seconds * 1000:.1f} ms window: too "
                f"short for the {self._interval * 1000:g} ms sampling interval", hint=hint)
        for d in self._sampled:
            self._check_sampled(d, joules[d], samples, seconds)
        for d in self._counter:
            delta = counters[d] - token.counters[d]
            if delta < 0:
                raise CounterResetError(
                    f"the NVML energy counter of {d} ({self._models[d]}) went back from {token.counters[d]} to "
                    f"{counters[d]} mJ in the {seconds * 1000:.1f} ms window: the counter was reset (driver "
                    "reloaded or GPU reset)", hint="measure again; check `nvidia-smi` if it keeps happening")
            if delta == 0:
                raise WindowTooShortError(
                    f"the NVML energy counter of {d} did not advance in the {seconds * 1000:.1f} ms window: "
                    f"too short for NVML's update interval (about {COUNTER_MIN_WINDOW_S * 1000:g} ms)",
                    hint=hint)
            joules[d] = delta / 1000.0
        joules = {d: joules[d] for d in self._handles}
        return EnergyReading(joules, sum(joules.values()), seconds, samples)

    def _check_sampled(self, d: str, joules: float, samples: int, seconds: float) -> None:
        """A sampled GPU that read 0 W in every sample of the window (NVML power is unsigned): too short
        once, broken when it happens :data:`ZERO_WINDOWS` windows in a row."""
        if joules > 0:
            self._zero_windows[d] = 0
            return
        self._zero_windows[d] += 1
        what = (f"NVML power of {d} ({self._models[d]}) read 0 W in all {samples} samples of the "
                f"{seconds * 1000:.1f} ms window")
        if self._zero_windows[d] >= ZERO_WINDOWS:
            raise MeterUnavailableError(
                f"{what}, {self._zero_windows[d]} windows in a row: this GPU's power reading does not work",
                hint="check `nvidia-smi -q -d POWER`, restrict the meter to other GPUs, or use another meter")
        raise WindowTooShortError(f"{what}: no power was recorded",
                                  hint=f"measure windows of at least {self.min_window_s:g} s")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._nvml.nvmlShutdown()


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as exc:
        raise MeterUnavailableError("the pynvml module is not installed", hint=PIP_HINT) from exc
    return pynvml


def open(pynvml: ModuleType | None = None, devices: list[int] | None = None,
         sample_interval_s: float = 0.02) -> NvmlMeter:
    """Open NVML on all GPUs (or the NVML ``devices`` indices). Raises ``MeterUnavailableError``."""
    nvml: Any = pynvml or _import_pynvml()
    try:
        nvml.nvmlInit()
    except Exception as exc:
        raise MeterUnavailableError(f"NVML cannot initialise ({type(exc).__name__}: {exc})",
                                    hint=DRIVER_HINT) from exc
    nvml_error = getattr(nvml, "NVMLError", Exception)
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            raise MeterUnavailableError("NVML sees no GPU", hint="check `nvidia-smi`")
        indices = list(range(count)) if devices is None else list(devices)
        bad = [i for i in indices if not 0 <= i < count]
        if bad or not indices:
            raise MeterUnavailableError(f"no GPU with NVML index {bad or indices}: NVML sees {count} GPU(s)",
                                        hint=f"choose device indices from 0 to {count - 1}")
        handles, counter, models = {}, set(), {}
        for i in indices:
            d = f"gpu{i}"
            handles[d] = handle = nvml.nvmlDeviceGetHandleByIndex(i)
            model = nvml.nvmlDeviceGetName(handle)
            models[d] = model.decode() if isinstance(model, bytes) else str(model)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                counter.add(d)
            except nvml_error:  # NVMLError_NotSupported before Volta: sample power instead
                try:
                    nvml.nvmlDeviceGetPowerUsage(handle)
                except nvml_error as exc:
                    raise MeterUnavailableError(
                        f"{d} ({models[d]}) reports neither an energy counter nor power ({exc})",
                        hint="power readings need a GPU with power management (`nvidia-smi -q -d POWER`)",
                    ) from exc
    except BaseException:
        nvml.nvmlShutdown()
        raise
    return NvmlMeter(nvml, handles, counter, models, sample_interval_s)


def probe(pynvml: ModuleType | None = None) -> MeterStatus:
    """Can NVML be initialised, and which GPUs does it see? ``pynvml`` may be a fake module in tests."""
    if pynvml is None:
        try:
            import pynvml as real
        except ImportError:
            return MeterStatus("nvml", False, "the pynvml module is not installed", PIP_HINT)
        pynvml = real
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return MeterStatus("nvml", False, f"NVML cannot initialise ({type(exc).__name__}: {exc})",
                           DRIVER_HINT)
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


def from_options(options: MeterOptions) -> NvmlMeter:
    """The registry's opener: ``options.devices`` restricts NVML to those GPU indices (all when empty)."""
    return open(devices=options.devices or None)
