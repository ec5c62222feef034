"""Power-meter probes against fake sysfs trees and a fake pynvml module (no hardware needed)."""

from __future__ import annotations

import types

from toolchain.energy import jetson, nvml, rapl


def _zone(root, name, label, energy="123456"):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(energy + "\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    return zone


def test_rapl_missing_powercap_says_why(tmp_path):
    status = rapl.probe(tmp_path / "absent")
    assert not status.readable and "does not exist" in status.detail and status.fix


def test_rapl_without_zones(tmp_path):
    status = rapl.probe(tmp_path)
    assert not status.readable and "modprobe" in status.fix


def test_rapl_two_sockets_with_dram(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0")
    _zone(tmp_path, "intel-rapl:1", "package-1")
    _zone(tmp_path, "intel-rapl:0:0", "dram")
    status = rapl.probe(tmp_path)
    assert status.readable
    assert "intel-rapl:0=package-0" in status.detail and "intel-rapl:1=package-1" in status.detail
    assert "intel-rapl:0:0=dram" in status.detail


def test_rapl_unreadable_counter_says_how_to_grant_access(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0")
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # unreadable as a file, even for root
    status = rapl.probe(tmp_path)
    assert not status.readable and "chmod" in status.fix


def _fake_nvml(gpus=("NVIDIA H100 80GB HBM3",), init_error=None):
    calls = []

    def init():
        if init_error:
            raise init_error
        calls.append("init")

    return types.SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: calls.append("shutdown"), nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: gpus[h].encode(), calls=calls)


def test_nvml_lists_gpus_and_shuts_down():
    fake = _fake_nvml(("GPU A", "GPU B"))
    status = nvml.probe(fake)
    assert status.readable and "2 GPU(s): GPU A, GPU B" in status.detail
    assert fake.calls == ["init", "shutdown"]


def test_nvml_without_driver():
    status = nvml.probe(_fake_nvml(init_error=RuntimeError("NVML Shared Library Not Found")))
    assert not status.readable and "Library Not Found" in status.detail and "nvidia-smi" in status.fix


def test_jetson_rails(tmp_path):
    assert not jetson.probe(tmp_path).readable
    hw = tmp_path / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    for i, label in enumerate(("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"), start=1):
        (hw / f"in{i}_label").write_text(label + "\n")
    status = jetson.probe(tmp_path)
    assert status.readable and "VDD_GPU_SOC" in status.detail


def test_nvml_missing_library(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    status = nvml.probe()
    assert not status.readable and "nvidia-ml-py" in status.fix
