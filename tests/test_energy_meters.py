"""Power meters measuring windows against fake sysfs trees, a fake pynvml module and the estimate model
(no hardware needed)."""

from __future__ import annotations

import threading
import time
import types

import pytest

from toolchain.core.errors import MeterUnavailableError, ToolchainError
from toolchain.energy import (
    CounterResetError,
    EnergyReading,
    Meter,
    MeterOptions,
    WindowTooShortError,
    estimate,
    jetson,
    nvml,
    open_meter,
    rapl,
)
from toolchain.profile.measure import measure

MAX_UJ = 262143328850


# ---------------------------------------------------------------- RAPL


def _zone(root, name, label, energy=1_000_000):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{MAX_UJ}\n")
    return zone


def _add(zone, uj):
    path = zone / "energy_uj"
    path.write_text(f"{(int(path.read_text()) + uj) % MAX_UJ}\n")


def _two_sockets(root):
    zones = {}
    for s in (0, 1):
        zones[f"package-{s}"] = _zone(root, f"intel-rapl:{s}", f"package-{s}")
        zones[f"core-{s}"] = _zone(root, f"intel-rapl:{s}:0", "core")
        zones[f"dram-{s}"] = _zone(root, f"intel-rapl:{s}:1", "dram")
    return zones


def test_rapl_two_sockets_packages_plus_dram(tmp_path):
    zones = _two_sockets(tmp_path)
    meter = rapl.open(tmp_path)
    assert isinstance(meter, Meter) and meter.measured and meter.min_window_s == 0.01
    assert "package-0 (intel-rapl:0)" in meter.source and "dram-1 (intel-rapl:1:1)" in meter.source
    assert "core-0 (intel-rapl:0:0, not in total)" in meter.source
    token = meter.begin()
    for name, uj in (("package-0", 5_000_000), ("package-1", 3_000_000), ("dram-0", 1_000_000),
                     ("dram-1", 500_000), ("core-0", 4_000_000)):
        _add(zones[name], uj)
    reading = meter.end(token)
    assert reading.joules == pytest.approx({"package-0": 5.0, "core-0": 4.0, "dram-0": 1.0, "package-1": 3.0,
                                            "core-1": 0.0, "dram-1": 0.5}, abs=1e-12)
    assert reading.total_j == pytest.approx(9.5, abs=1e-12)  # core-0 is inside package-0: not added again
    assert reading.seconds > 0 and reading.samples == 0
    meter.close()


def test_rapl_counter_wraparound(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", energy=MAX_UJ - 1_000_000)
    meter = rapl.open(tmp_path)
    token = meter.begin()
    (zone / "energy_uj").write_text("4000000\n")  # wrapped: 1 J up to the range, 4 J after it
    assert meter.end(token).total_j == pytest.approx(5.0, abs=1e-9)


def test_rapl_counter_not_advancing_is_too_short(tmp_path):
    _two_sockets(tmp_path)
    meter = rapl.open(tmp_path)
    with pytest.raises(WindowTooShortError, match="did not advance") as err:
        meter.end(meter.begin())
    assert "0.01 s" in err.value.hint


def test_rapl_permission_denied_says_how_to_fix(tmp_path, monkeypatch):
    _two_sockets(tmp_path)

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rapl, "read_counter", denied)
    with pytest.raises(MeterUnavailableError, match="readable by root only") as err:
        rapl.open(tmp_path)
    assert "sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj" in err.value.hint


def test_rapl_unreadable_counter_and_missing_tree(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0")
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # unreadable as a file, even for root
    with pytest.raises(MeterUnavailableError) as err:
        rapl.open(tmp_path)
    assert "chmod" in err.value.hint
    with pytest.raises(MeterUnavailableError, match="does not exist"):
        rapl.open(tmp_path / "absent")


def test_rapl_wraps_on_several_zones_in_one_window(tmp_path):
    zones = _two_sockets(tmp_path)
    for name, start in (("package-0", MAX_UJ - 2_000_000), ("dram-1", MAX_UJ - 500_000),
                        ("core-0", MAX_UJ - 1_000_000)):
        (zones[name] / "energy_uj").write_text(f"{start}\n")
    meter = rapl.open(tmp_path)
    token = meter.begin()
    for name, uj in (("package-0", 6_000_000), ("package-1", 3_000_000), ("dram-0", 1_000_000),
                     ("dram-1", 2_000_000), ("core-0", 4_000_000)):
        _add(zones[name], uj)  # package-0, core-0 and dram-1 wrap past max_energy_range_uj
    assert int((zones["package-0"] / "energy_uj").read_text()) < MAX_UJ - 2_000_000
    reading = meter.end(token)
    assert reading.joules == pytest.approx({"package-0": 6.0, "core-0": 4.0, "dram-0": 1.0, "package-1": 3.0,
                                            "core-1": 0.0, "dram-1": 2.0}, abs=1e-9)
    assert reading.total_j == pytest.approx(12.0, abs=1e-9)


def test_rapl_counter_reset_is_not_read_as_a_262_kj_wrap(tmp_path):
    zones = _two_sockets(tmp_path)
    (zones["package-1"] / "energy_uj").write_text("100000000000\n")  # 100 kJ since boot
    meter = rapl.open(tmp_path)
    token = meter.begin()
    _add(zones["package-0"], 5_000_000)
    (zones["package-1"] / "energy_uj").write_text("3000000\n")  # module reloaded: back to 3 J
    with pytest.raises(CounterResetError, match="package-1 .*intel-rapl:1/energy_uj.* went back from "
                       "100000000000 to 3000000 uJ.*counter was reset") as err:
        meter.end(token)
    assert isinstance(err.value, MeterUnavailableError) and "measure again" in err.value.hint
    assert "\n" not in str(err.value)
    _add(zones["package-0"], 1_000_000)  # the next window, after the reset, reads normally
    token = meter.begin()
    _add(zones["package-1"], 2_000_000)
    assert meter.end(token).total_j == pytest.approx(2.0, abs=1e-9)


def test_rapl_backwards_jump_is_a_wrap_only_when_its_power_is_plausible(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", energy=MAX_UJ - 50_000_000)
    meter = rapl.open(tmp_path)
    token = meter.begin()
    (zone / "energy_uj").write_text("10000000\n")  # 60 J: plausible even over the 10 ms minimum window
    assert meter.end(token).total_j == pytest.approx(60.0, abs=1e-9)
    (zone / "energy_uj").write_text(f"{MAX_UJ // 2}\n")
    token = meter.begin()
    (zone / "energy_uj").write_text(f"{MAX_UJ // 2 - 1}\n")  # 1 uJ back: a 262 kJ "wrap" in one window
    with pytest.raises(CounterResetError, match=r"would be 262143 J \(.* W, above the 10000 W plausible\)"):
        meter.end(token)


def test_rapl_counter_vanishing_mid_run(tmp_path):
    zones = _two_sockets(tmp_path)
    meter = rapl.open(tmp_path)
    token = meter.begin()
    (zones["dram-0"] / "energy_uj").unlink()  # intel_rapl unloaded during the window
    with pytest.raises(MeterUnavailableError, match="intel-rapl:0:1/energy_uj vanished") as err:
        meter.end(token)
    assert "modprobe intel_rapl_common" in err.value.hint and "chmod" not in err.value.hint


# ---------------------------------------------------------------- NVML


class FakeNVMLError(Exception):
    pass


class FakeNotSupported(FakeNVMLError):
    pass


def _fake_nvml(models=("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"), counter=(True, True),
               power_mw=(150_000, 200_000)):
    """``state.fail``: an exception every later device read raises (a GPU lost mid-run)."""
    state = types.SimpleNamespace(energy_mj=[1_000_000] * len(models), power_mw=list(power_mw), calls=[],
                                  fail=None)

    def total(h):
        if state.fail is not None:
            raise state.fail
        if not counter[h]:
            raise FakeNotSupported("Not Supported")
        return state.energy_mj[h]

    def power(h):
        if state.fail is not None:
            raise state.fail
        return state.power_mw[h]

    module = types.SimpleNamespace(
        NVMLError=FakeNVMLError, nvmlInit=lambda: state.calls.append("init"),
        nvmlShutdown=lambda: state.calls.append("shutdown"), nvmlDeviceGetCount=lambda: len(models),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: models[h].encode(),
        nvmlDeviceGetTotalEnergyConsumption=total, nvmlDeviceGetPowerUsage=power)
    return module, state


def test_nvml_energy_counter_on_two_gpus():
    fake, state = _fake_nvml()
    meter = nvml.open(fake)
    assert isinstance(meter, Meter) and meter.min_window_s == 0.1
    assert meter.source == ("NVML: gpu0 NVIDIA H100 80GB HBM3 (energy counter), "
                            "gpu1 NVIDIA A100-SXM4-40GB (energy counter)")
    token = meter.begin()
    state.energy_mj[0] += 5000
    state.energy_mj[1] += 7500
    reading = meter.end(token)
    assert reading.joules == pytest.approx({"gpu0": 5.0, "gpu1": 7.5}, abs=1e-12)
    assert reading.total_j == pytest.approx(12.5, abs=1e-12) and reading.samples == 0
    meter.close()
    meter.close()
    assert state.calls == ["init", "shutdown"]


def test_nvml_counter_not_updated_is_too_short():
    fake, state = _fake_nvml()
    meter = nvml.open(fake, devices=[1])
    token = meter.begin()
    state.energy_mj[0] += 5000  # gpu0 is not measured; gpu1's counter stays put
    with pytest.raises(WindowTooShortError, match="gpu1 did not advance.*too short for NVML's update") as err:
        meter.end(token)
    assert "at least 0.1 s" in err.value.hint


def test_nvml_falls_back_to_sampling_power():
    fake, state = _fake_nvml(counter=(True, False))
    meter = nvml.open(fake, sample_interval_s=0.005)
    assert "gpu1 NVIDIA A100-SXM4-40GB (sampled power every 5 ms)" in meter.source
    assert meter.min_window_s == 0.1
    token = meter.begin()
    state.energy_mj[0] += 2000
    time.sleep(0.03)
    reading = meter.end(token)
    assert reading.samples >= 3 and reading.joules["gpu0"] == pytest.approx(2.0, abs=1e-12)
    assert reading.joules["gpu1"] == pytest.approx(200.0 * reading.seconds, rel=0.05)
    assert reading.total_j == pytest.approx(reading.joules["gpu0"] + reading.joules["gpu1"])


def test_nvml_too_few_samples_is_too_short():
    fake, _ = _fake_nvml(counter=(False, False))
    meter = nvml.open(fake, sample_interval_s=1.0)
    assert meter.min_window_s == 2.0
    with pytest.raises(WindowTooShortError, match="sampled only 2 times") as err:
        meter.end(meter.begin())
    assert "at least 2 s" in err.value.hint


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-power-sampler") and t.is_alive()]


def test_nvml_sampled_zero_watts_is_never_a_zero_reading():
    fake, state = _fake_nvml(counter=(False, False), power_mw=(0, 200_000))
    meter = nvml.open(fake, sample_interval_s=0.005)
    token = meter.begin()
    time.sleep(0.03)
    with pytest.raises(WindowTooShortError, match="gpu0 .*H100.* read 0 W in all .* samples"):
        meter.end(token)
    token = meter.begin()
    time.sleep(0.03)
    with pytest.raises(MeterUnavailableError, match="gpu0 .*read 0 W.*2 windows in a row.*does not work") as err:
        meter.end(token)
    assert not isinstance(err.value, WindowTooShortError) and "nvidia-smi -q -d POWER" in err.value.hint
    state.power_mw[0] = 100_000  # reads again: windows are fine, and the zero count starts over
    token = meter.begin()
    time.sleep(0.03)
    assert meter.end(token).joules["gpu0"] > 0
    state.power_mw[0] = 0
    token = meter.begin()
    time.sleep(0.03)
    with pytest.raises(WindowTooShortError):
        meter.end(token)


def test_nvml_error_after_open_names_the_gpu():
    fake, state = _fake_nvml()
    meter = nvml.open(fake)
    token = meter.begin()
    state.fail = FakeNVMLError("GPU is lost")
    with pytest.raises(MeterUnavailableError, match=r"energy counter of gpu0 \(NVIDIA H100 80GB HBM3\).*"
                       "FakeNVMLError: GPU is lost") as err:
        meter.end(token)
    assert "nvidia-smi" in err.value.hint and "\n" not in str(err.value)
    with pytest.raises(MeterUnavailableError, match="gpu0.*GPU is lost"):
        meter.begin()


def test_nvml_error_while_sampling_stops_the_sampler():
    fake, state = _fake_nvml(counter=(True, False))
    meter = nvml.open(fake, sample_interval_s=0.005)
    token = meter.begin()
    time.sleep(0.02)
    state.fail = FakeNVMLError("Unknown Error")
    time.sleep(0.02)
    with pytest.raises(MeterUnavailableError, match="gpu[01] .*Unknown Error"):
        meter.end(token)
    assert not _sampler_threads()
    state.fail = None
    token = meter.begin()
    state.fail = FakeNVMLError("Unknown Error")  # the counter read in end() fails: the sampler still stops
    with pytest.raises(MeterUnavailableError, match="energy counter of gpu0"):
        meter.end(token)
    assert not _sampler_threads()
    with pytest.raises(MeterUnavailableError, match="Unknown Error"):
        meter.begin()  # the first sample fails in begin()
    assert not _sampler_threads()


def test_nvml_counter_going_back_is_a_reset():
    fake, state = _fake_nvml()
    meter = nvml.open(fake, devices=[0])
    token = meter.begin()
    state.energy_mj[0] = 2000  # driver reloaded: counter restarted
    with pytest.raises(CounterResetError, match="gpu0 .*went back from 1000000 to 2000 mJ"):
        meter.end(token)


def test_nvml_bad_device_index_shuts_down():
    fake, state = _fake_nvml()
    with pytest.raises(MeterUnavailableError, match="NVML index"):
        nvml.open(fake, devices=[5])
    assert state.calls == ["init", "shutdown"]


def test_nvml_missing_library(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(MeterUnavailableError, match="not installed") as err:
        nvml.open()
    assert "pip install nvidia-ml-py" in err.value.hint


# ---------------------------------------------------------------- Jetson


def _board(root, rails=(("VDD_IN", 5000, 2000), ("VDD_CPU_GPU_CV", 5000, 400), ("VDD_SOC", 5000, 600))):
    hw = root / "ina3221" / "1-0040" / "hwmon" / "hwmon1"
    hw.mkdir(parents=True)
    for i, (label, mv, ma) in enumerate(rails, start=1):
        (hw / f"in{i}_label").write_text(label + "\n")
        (hw / f"in{i}_input").write_text(f"{mv}\n")
        (hw / f"curr{i}_input").write_text(f"{ma}\n")
    (hw / "in4_input").write_text("12\n")  # unlabelled shunt channel: ignored
    return hw


def test_jetson_samples_rails_total_is_board_input(tmp_path):
    _board(tmp_path)
    meter = jetson.open(tmp_path, sample_interval_s=0.005)
    assert isinstance(meter, Meter) and meter.min_window_s == pytest.approx(0.01)
    assert "total = VDD_IN" in meter.source
    token = meter.begin()
    time.sleep(0.03)
    reading = meter.end(token)
    assert reading.samples >= 3 and set(reading.joules) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert reading.joules["VDD_IN"] == pytest.approx(10.0 * reading.seconds, rel=1e-9)
    assert reading.joules["VDD_SOC"] == pytest.approx(3.0 * reading.seconds, rel=1e-9)
    assert reading.total_j == reading.joules["VDD_IN"] and reading.watts == pytest.approx(10.0)


def test_jetson_follows_power_changes_and_sums_without_board_rail(tmp_path):
    hw = _board(tmp_path, (("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 200)))
    meter = jetson.open(tmp_path, sample_interval_s=0.005)
    token = meter.begin()
    time.sleep(0.02)
    (hw / "curr1_input").write_text("2000\n")  # VDD_GPU_SOC: 5 W -> 10 W
    time.sleep(0.02)
    reading = meter.end(token)
    assert 5.0 * reading.seconds < reading.joules["VDD_GPU_SOC"] < 10.0 * reading.seconds
    assert reading.total_j == pytest.approx(reading.joules["VDD_GPU_SOC"] + reading.joules["VDD_CPU_CV"])


def test_jetson_too_few_samples_and_permission(tmp_path, monkeypatch):
    _board(tmp_path)
    meter = jetson.open(tmp_path, sample_interval_s=1.0)
    with pytest.raises(WindowTooShortError, match="sampled only 2 times"):
        meter.end(meter.begin())

    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(jetson, "read_value", denied)
    with pytest.raises(MeterUnavailableError, match="not readable") as err:
        jetson.open(tmp_path)
    assert "sudo chmod a+r" in err.value.hint
    with pytest.raises(MeterUnavailableError, match="not a Jetson"):
        jetson.open(tmp_path / "absent")


def test_jetson_board_rail_at_zero_is_never_a_zero_reading(tmp_path):
    _board(tmp_path, (("VDD_IN", 5000, 0), ("VDD_SOC", 5000, 600)))
    meter = jetson.open(tmp_path, sample_interval_s=0.005)
    token = meter.begin()
    time.sleep(0.03)
    with pytest.raises(WindowTooShortError, match="rail VDD_IN read 0 W in all .* samples"):
        meter.end(token)
    token = meter.begin()
    time.sleep(0.03)
    with pytest.raises(MeterUnavailableError, match="VDD_IN read 0 W.*2 windows in a row") as err:
        meter.end(token)
    assert not isinstance(err.value, WindowTooShortError)


def test_jetson_rails_summed_at_zero_are_never_a_zero_reading(tmp_path):
    _board(tmp_path, (("VDD_GPU_SOC", 5000, 0), ("VDD_CPU_CV", 0, 200)))
    meter = jetson.open(tmp_path, sample_interval_s=0.005)
    token = meter.begin()
    time.sleep(0.03)
    with pytest.raises(WindowTooShortError, match=r"every Jetson rail \(VDD_GPU_SOC, VDD_CPU_CV\) read 0 W"):
        meter.end(token)


def test_jetson_negative_current_is_a_fault_naming_the_rail(tmp_path):
    hw = _board(tmp_path)
    meter = jetson.open(tmp_path, sample_interval_s=0.005)
    token = meter.begin()
    time.sleep(0.01)
    (hw / "curr3_input").write_text("-600\n")  # VDD_SOC
    time.sleep(0.02)
    with pytest.raises(MeterUnavailableError, match="rail VDD_SOC read 5000 mV x -600 mA .*curr3_input.*fault"):
        meter.end(token)
    assert not _sampler_threads()
    with pytest.raises(MeterUnavailableError, match="VDD_SOC.*negative"):
        jetson.open(tmp_path)


def test_jetson_rail_vanishing_mid_run(tmp_path):
    hw = _board(tmp_path)
    meter = jetson.open(tmp_path, sample_interval_s=0.005)
    token = meter.begin()
    (hw / "curr1_input").unlink()  # ina3221 unbound during the window
    time.sleep(0.02)
    with pytest.raises(MeterUnavailableError, match="rail VDD_IN's files vanished.*curr1_input"):
        meter.end(token)
    assert not _sampler_threads()


# ---------------------------------------------------------------- estimate


def test_estimate_user_watts_times_wall_time():
    meter = open_meter("estimate", MeterOptions(watts=50.0))
    assert isinstance(meter, Meter) and not meter.measured
    assert meter.source == "estimated: wall time x 50 W (user-given whole-device power)"
    token = meter.begin()
    time.sleep(0.02)
    reading = meter.end(token)
    assert reading.joules["device"] == pytest.approx(50.0 * reading.seconds, rel=1e-12)
    assert reading.watts == pytest.approx(50.0)


def test_estimate_cpu_time_times_watts_per_core():
    meter = estimate.open(watts_per_core=2.0)
    assert not meter.measured
    assert meter.source.startswith("estimated: process CPU time x 2 W/core (user-given)")
    outer = time.process_time()
    token = meter.begin()
    inner = time.process_time()
    while time.process_time() - inner < 0.05:
        sum(range(1000))
    reading = meter.end(token)
    cpu = time.process_time() - outer
    assert 2.0 * 0.05 <= reading.joules["cpu"] <= 2.0 * cpu and reading.total_j == reading.joules["cpu"]


def test_estimate_idle_is_zero_but_short_window_raises():
    meter = estimate.open(watts=10.0)
    with pytest.raises(WindowTooShortError, match="shorter than"):
        meter.end(meter.begin())
    with pytest.raises(MeterUnavailableError, match="not both"):
        estimate.open(watts=10.0, watts_per_core=1.0)
    with pytest.raises(MeterUnavailableError, match="positive"):
        estimate.open(watts=0.0)


@pytest.mark.parametrize(("cpuinfo", "label", "per_core"), [
    ("model name\t: AMD EPYC 7763 64-Core Processor\n", "AMD EPYC 7763: 280 W TDP / 64 cores", 4.375),
    ("model name\t: Intel(R) Xeon(R) Platinum 8480+\n", "Xeon Platinum 8480+: 350 W TDP / 56 cores", 6.25),
    ("model name\t: AMD EPYC\n", "AMD EPYC generic (EPYC 7763-class): 280 W TDP / 64 cores", 4.375),
    ("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n", "Neoverse-N1 (Ampere Altra", 210 / 80),
    ("model name\t: Mystery CPU 9000\n", "unknown CPU, assumed: 80 W TDP / 16 cores", 5.0),
])
def test_estimate_tdp_table_lookup(tmp_path, cpuinfo, label, per_core):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    meter = estimate.open(cpuinfo=path)
    assert meter.watts_per_core == pytest.approx(per_core) and label in meter.source
    assert meter.source.startswith("estimated: process CPU time x") and meter.source.endswith("; TDP table)")
    status = estimate.probe(path)
    assert status.readable and not status.measured and "not a measurement" in status.detail
    assert "unknown CPU, assumed" in estimate.open(cpuinfo=tmp_path / "absent").source



# ---------------------------------------------------------------- windows against the idle baseline


class ScriptedMeter:
    """Returns the readings (or raises the errors) of ``script`` in order, one per window."""

    name, source, min_window_s = "scripted", "a script", 0.0

    def __init__(self, script, measured=True):
        self.script, self.measured = list(script), measured

    def begin(self):
        return None

    def end(self, token):
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return EnergyReading({"pkg": item[0]}, item[0], item[1])

    def close(self):
        pass


def _measure(script, measured=True, idle_s=0.01):
    meter = ScriptedMeter(script, measured)
    readings = len([i for i in script if not isinstance(i, Exception)])
    result = measure({"m": lambda: None}, meter, repeats=readings - (idle_s > 0), window_s=0.0, warmup=0,
                     idle_s=idle_s)["m"]
    assert not meter.script
    return result


def test_window_below_idle_is_clamped_with_a_note():
    result = _measure([(10.0, 1.0), (15.0, 1.0), (8.0, 1.0), (12.0, 1.0)])  # idle 10 W, then three windows
    assert result.idle_watts == 10.0
    assert [w.net_j for w in result.windows] == pytest.approx([5.0, 0.0, 2.0])
    assert [w.gross_j for w in result.windows] == [15.0, 8.0, 12.0]
    assert len(result.notes) == 1
    assert result.notes[0] == ("window 2/3 read below idle: 8 J against the idle baseline's 10 J (10 W) over 1 s, "
                               "2 J (20.0%) below; net energy clamped to 0")


def test_every_window_below_idle_is_an_error():
    with pytest.raises(ToolchainError, match=r"every window of m read at or below the idle baseline \(8.5 W "
                       r"against 10 W idle, measured over 0.01 s\): the idle baseline is unreliable") as err:
        _measure([(10.0, 1.0), (8.0, 1.0), (9.0, 1.0)])
    assert "--idle SECONDS" in err.value.cli_text() and "quieter machine" in err.value.cli_text()
    assert "idle_s=SECONDS" in str(err.value)
    with pytest.raises(ToolchainError, match="every window"):
        _measure([(10.0, 1.0), (10.0, 1.0), (10.0, 1.0)])  # exactly idle: net 0 everywhere
    with pytest.raises(ToolchainError, match="read 0 J in every window"):
        _measure([(0.0, 1.0), (0.0, 1.0)], idle_s=0)


def test_estimates_at_idle_do_not_raise():
    result = _measure([(10.0, 1.0), (10.0, 1.0), (10.0, 1.0)], measured=False)
    assert [w.net_j for w in result.windows] == [0.0, 0.0] and not result.notes


def test_counter_reset_window_is_measured_again_once():
    reset = CounterResetError("the RAPL counter package-0 went back")
    result = _measure([(1.0, 1.0), (5.0, 1.0), reset, (6.0, 1.0)])
    assert [w.gross_j for w in result.windows] == [5.0, 6.0]
    assert result.notes == ["window 2 measured again: the RAPL counter package-0 went back"]
    with pytest.raises(CounterResetError):
        _measure([(1.0, 1.0), (5.0, 1.0), reset, reset, (6.0, 1.0)])
    result = _measure([reset, (1.0, 1.0), (5.0, 1.0), (6.0, 1.0)])  # in the idle baseline too
    assert result.idle_watts == 1.0
