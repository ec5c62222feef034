"""The openvino-cpu target: usable where Intel's onnxruntime-openvino build is installed (the second venv,
.venv-openvino, that `make install-openvino` builds and `make test` needs), refused with the fix in a venv
with the plain onnxruntime build; and `doctor` naming the onnxruntime build in both."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from toolchain.targets.presets import PRESETS
from toolchain.targets.target import load_target

ROOT = Path(__file__).resolve().parents[1]
OV_BIN = ROOT / ".venv-openvino" / "bin"

needs_ov_venv = pytest.mark.skipif(not (OV_BIN / "toolchain").is_file(),
                                   reason="no .venv-openvino here: `make install-openvino` builds it")


def _ov_json(*args: str) -> dict:
    done = subprocess.run([str(OV_BIN / "toolchain"), *args, "--json"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@needs_ov_venv
def test_openvino_venv_lists_openvino_cpu_and_x86_cpu_as_usable():
    targets = {t["name"]: t for t in _ov_json("targets")["targets"]}
    for name in ("openvino-cpu", "x86-cpu"):
        assert targets[name]["usable"], targets[name]["reason"]
    ov = targets["openvino-cpu"]
    assert [p["name"] for p in ov["providers"]] == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    assert ov["providers"][0]["options"] == {"device_type": "CPU"}
    assert ov["quantization_preset"] == "openvino"
    # energy stays honest: rapl only, reported unreadable on a VM, never a silent estimate
    assert ov["meters"] == ["rapl"]


@needs_ov_venv
def test_openvino_venv_doctor_names_the_build_and_the_openvino_device():
    report = _ov_json("doctor")
    build = report["onnxruntime_build"]
    assert build["distribution"] == "onnxruntime-openvino" and build["version"]
    assert report["versions"]["onnxruntime-openvino"] == build["version"]
    assert "CPU" in build["openvino"]["devices"]
    usable = {p["name"] for p in report["providers"] if p["usable"]}
    assert {"OpenVINOExecutionProvider", "CPUExecutionProvider"} <= usable


def test_plain_onnxruntime_refuses_openvino_cpu_with_a_one_line_fix():
    import onnxruntime as ort

    from toolchain.targets.host import usable

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this venv has the OpenVINO build")
    ok, why = usable(load_target("openvino-cpu"))
    assert not ok
    assert "\n" not in why
    assert "OpenVINOExecutionProvider is not in this onnxruntime build" in why
    assert "pip install onnxruntime-openvino" in why


def test_doctor_names_this_venvs_onnxruntime_build():
    from toolchain.report.doctor import onnxruntime_build

    build = onnxruntime_build()
    assert build["distribution"] in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
    assert build["version"] == build["installed"][build["distribution"]]
    assert "openvino" not in build  # only asked for when the OpenVINO provider is listed


def test_openvino_cpu_points_at_its_measured_preset():
    target = load_target("openvino-cpu")
    assert target.quant_preset == "openvino"
    chosen = PRESETS["openvino"].static
    assert (chosen.mode, chosen.fmt) == ("static", "qdq")
    chosen.validate()
    assert chosen in PRESETS["openvino"].candidates
