"""Typed, lenient readers of a cost table's ``measurement`` (and of a comparison column, which carries the
same keys): frozen records whose attributes are the dict's keys, so that
``table.measured.latency_ms.median_ms`` is ``measurement["latency_ms"]["median_ms"]``. A missing or
malformed key reads as None (``()`` for lists); values are not converted, so callers decide what n/a
means. :mod:`toolchain.formats.costs` re-exports them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def _obj(data: Any, key: str) -> Mapping[str, Any]:
    """``data[key]`` when both are mappings, else an empty mapping (missing or malformed reads as absent)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _pair(value: Any) -> tuple[Any, Any] | None:
    """A two-value interval (JSON list or in-memory tuple) as a tuple, else None."""
    return (value[0], value[1]) if isinstance(value, list | tuple) and len(value) == 2 else None


def _seq(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else ()


class _Flat:
    """A record of plain fields read from a dict by name (``_PAIRS``: two-value intervals, ``_SEQS``: lists)."""

    _PAIRS: tuple[str, ...] = ()
    _SEQS: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        def get(name: str) -> Any:
            return _pair(d.get(name)) if name in cls._PAIRS else _seq(d.get(name)) if name in cls._SEQS else d.get(name)

        return cls(**{f.name: get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class EnergyStat(_Flat):
    """``{mean, std, ci95, n, cv_pct}`` over the windows (:meth:`toolchain.core.stats.Summary.to_dict`):
    joules per inference or watts."""

    mean: float | None = None
    std: float | None = None
    ci95: tuple[float, float] | None = None
    n: int | None = None
    cv_pct: float | None = None
    _PAIRS = ("ci95",)


@dataclass(frozen=True)
class LatencyStat(_Flat):
    """``{median_ms, mean_ms, std_ms, p10_ms, p90_ms, ci95_ms, runs}`` of the calls timed inside the windows
    (:meth:`toolchain.core.stats.Summary.to_latency_dict`)."""

    median_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    ci95_ms: tuple[float, float] | None = None
    runs: int | None = None
    _PAIRS = ("ci95_ms",)


@dataclass(frozen=True)
class NetGross:
    """``{net, gross, kind}``: a figure net of the idle baseline and as the meter read it (``kind``:
    "measured" or "estimated"); the shape of ``joules_per_inference`` and ``watts``."""

    net: EnergyStat = field(default_factory=EnergyStat)
    gross: EnergyStat = field(default_factory=EnergyStat)
    kind: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetGross:
        return cls(EnergyStat.from_dict(_obj(d, "net")), EnergyStat.from_dict(_obj(d, "gross")), d.get("kind"))


@dataclass(frozen=True)
class CarbonStat(_Flat):
    """``gco2e_per_1000``: gCO2e per 1,000 inferences at ``intensity_g_per_kwh`` (:func:`grams_co2e_per_1000`)."""

    mean: float | None = None
    ci95: tuple[float, float] | None = None
    kind: str | None = None
    intensity_g_per_kwh: float | None = None
    intensity_source: str | None = None
    _PAIRS = ("ci95",)


@dataclass(frozen=True)
class MeterInfo(_Flat):
    """The meter: ``name``, ``kind`` ("measured"/"estimated"), ``source``; the table's top-level ``meter``
    also has ``idle_watts``."""

    name: str | None = None
    kind: str | None = None
    source: str | None = None
    idle_watts: float | None = None


@dataclass(frozen=True)
class IdleBaseline(_Flat):
    """``idle_baseline``: the meter's watts over ``seconds`` of idling, subtracted to give net figures, and
    other processes' share of all CPUs meanwhile (None: not checked)."""

    watts: float | None = None
    seconds: float | None = None
    other_cpu_share: float | None = None


@dataclass(frozen=True)
class CpuLoad(_Flat):
    """``cpu_load``: whether other processes' CPU use was checked, on how many CPUs, the largest share of a
    window, the warning threshold and the (1-based) windows over it."""

    checked: bool | None = None
    source: str | None = None
    cpus: int | None = None
    max_other_share: float | None = None
    threshold: float | None = None
    windows_over: tuple[int, ...] = ()
    windows_not_checked: tuple[int, ...] = ()
    idle_other_share: float | None = None
    _SEQS = ("windows_over", "windows_not_checked")


@dataclass(frozen=True)
class WindowRecord(_Flat):
    """One measured window (:class:`toolchain.profile.measure.Window`): calls, seconds, joules of the whole
    window, and other processes' share of all CPUs meanwhile."""

    inferences: int | None = None
    seconds: float | None = None
    gross_j: float | None = None
    net_j: float | None = None
    domains: Mapping[str, float] = field(default_factory=dict)
    other_cpu_share: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowRecord:
        return super().from_dict({**d, "domains": dict(_obj(d, "domains"))})


@dataclass(frozen=True)
class MeasurementRecord:
    """A cost table's ``measurement`` (also a comparison column's, which carries the same keys) as typed
    records. Energy figures are per inference, one sample (a call's / ``batch``); latency is per call."""

    label: str | None = None
    batch: int | None = None
    per_inference: str | None = None
    meter: MeterInfo = field(default_factory=MeterInfo)
    idle_baseline: IdleBaseline = field(default_factory=IdleBaseline)
    repeats: int | None = None
    inferences_per_window: tuple[int, ...] = ()
    latency_ms: LatencyStat = field(default_factory=LatencyStat)
    latency_ms_per_sample: LatencyStat = field(default_factory=LatencyStat)
    joules_per_inference: NetGross = field(default_factory=NetGross)
    watts: NetGross = field(default_factory=NetGross)
    gco2e_per_1000: CarbonStat = field(default_factory=CarbonStat)
    cpu_load: CpuLoad = field(default_factory=CpuLoad)
    windows: tuple[WindowRecord, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> str | None:
        """The energy's kind, "measured" or "estimated": the meter's, else the energy figures'."""
        return self.meter.kind or self.joules_per_inference.kind

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MeasurementRecord:
        """Read ``d`` leniently: what is missing or not of its shape reads as absent."""
        d = d if isinstance(d, Mapping) else {}
        nested = {f.name: f.default_factory.from_dict(_obj(d, f.name)) for f in fields(cls) if callable(f.default_factory)}
        return cls(**{f.name: d.get(f.name) for f in fields(cls) if f.default is None}, **nested,
                   inferences_per_window=_seq(d.get("inferences_per_window")),
                   windows=tuple(WindowRecord.from_dict(w) for w in _seq(d.get("windows")) if isinstance(w, Mapping)),
                   notes=tuple(str(n) for n in _seq(d.get("notes"))))
