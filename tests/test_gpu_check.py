"""benchmarks/gpu_check.sh on a machine without an NVIDIA GPU, and its summary builder (benchmarks/gpu_check.py)
on recorded `toolchain compare --json` output."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HELPER = ROOT / "benchmarks" / "gpu_check.py"


def _helper():
    spec = importlib.util.spec_from_file_location("gpu_check", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gc = _helper()

# `toolchain compare tiny.onnx tiny.int8.onnx --targets x86-cpu,cuda,tensorrt --meter estimate --repeats 2
# --window 0.2 --idle 0 --profile-runs 2 --json` (tiny-resnet, INT8 with the gpu preset) on a 2-core machine with
# the CPU build of onnxruntime; floats rounded to 6 digits, layer_deltas cut to one entry.
_EST = {"name": "estimate", "kind": "estimated", "idle_watts": 0.0,
        "source": "estimated: process CPU time x 4.38 W/core (AMD EPYC generic (EPYC 7763-class): 280 W TDP / 64 "
                  "cores; TDP table)"}


def _stat(mean, std, lo, hi, cv):
    return {"mean": mean, "std": std, "ci95": [lo, hi], "n": 2, "cv_pct": cv}


RECORDED = {
    "columns": [
        {"model": "tiny.onnx", "target": "x86-cpu", "precision": "fp32",
         "sha256": "8026b49a4496e7fddef6e53004dfa72edc4cfba83c23351bf3d22749dc0bac7e",
         "latency_ms": {"median_ms": 0.378304, "mean_ms": 0.400785, "std_ms": 0.121686, "p10_ms": 0.273909,
                        "p90_ms": 0.527419, "ci95_ms": [0.392931, 0.40864], "runs": 922},
         "joules_per_inference": {"net": _stat(0.00174346, 0.000124505, 0.000624854, 0.00286208, 7.14121),
                                  "gross": _stat(0.00174346, 0.000124505, 0.000624854, 0.00286208, 7.14121),
                                  "kind": "estimated"},
         "watts": {"gross": _stat(4.33729, 0.0276741, 4.08865, 4.58593, 0.638051),
                   "net": _stat(4.33729, 0.0276741, 4.08865, 4.58593, 0.638051), "kind": "estimated"},
         "gco2e_per_1000": {"mean": 0.000211153, "ci95": [7.56767e-05, 0.000346629], "kind": "estimated",
                            "intensity_g_per_kwh": 436.0, "intensity_source": "Ember, Global Electricity Review 2023"},
         "meter": _EST, "repeats": 2, "latency_ratio": 1.0, "energy_ratio": 1.0},
        {"model": "tiny.int8.onnx", "target": "x86-cpu", "precision": "int8",
         "sha256": "f4cca0477b46c0afe79614c827de6831fd1334eb8414a3223d54505a835f648c",
         "latency_ms": {"median_ms": 0.898224, "mean_ms": 0.897254, "std_ms": 0.199767, "p10_ms": 0.667505,
                        "p90_ms": 1.08968, "ci95_ms": [0.880854, 0.913654], "runs": 570},
         "joules_per_inference": {"net": _stat(0.00390589, 0.000321852, 0.00101421, 0.00679756, 8.24017),
                                  "gross": _stat(0.00390589, 0.000321852, 0.00101421, 0.00679756, 8.24017),
                                  "kind": "estimated"},
         "watts": {"gross": _stat(4.34785, 0.0257681, 4.11633, 4.57936, 0.592664),
                   "net": _stat(4.34785, 0.0257681, 4.11633, 4.57936, 0.592664), "kind": "estimated"},
         "gco2e_per_1000": {"mean": 0.000473046, "ci95": [0.000122832, 0.00082326], "kind": "estimated",
                            "intensity_g_per_kwh": 436.0, "intensity_source": "Ember, Global Electricity Review 2023"},
         "meter": _EST, "repeats": 2, "latency_ratio": 2.23874, "energy_ratio": 2.2403},
    ],
    "skipped": [
        {"target": "cuda", "reason": "target 'cuda' is not usable on this machine: CUDAExecutionProvider is not in "
                                     "this onnxruntime build (it has Azure, CPU): pip uninstall -y onnxruntime && pip "
                                     "install onnxruntime-gpu (needs an NVIDIA GPU with its driver, CUDA and cuDNN) "
                                     "(`toolchain targets` lists the targets and why each is or is not usable)"},
        {"target": "tensorrt", "reason": "target 'tensorrt' is not usable on this machine: TensorrtExecutionProvider "
                                         "and CUDAExecutionProvider are not in this onnxruntime build (it has Azure, "
                                         "CPU): pip uninstall -y onnxruntime && pip install onnxruntime-gpu, and "
                                         "install TensorRT so its libraries are on the library path (needs an NVIDIA "
                                         "GPU) (`toolchain targets` lists the targets and why each is or is not usable)"},
    ],
    "layer_deltas": [{"module": "resnet.embedder.embedder.convolution", "base_ms": 0.1855, "base_j": 0.000331876,
                      "columns": {"tiny.int8.onnx @ x86-cpu": {"ms": 0.23, "j": 0.000654062, "delta_ms": 0.0445,
                                                               "delta_j": 0.000322186}}}],
}


def _gpu_shaped() -> dict:
    """The recorded document as the GPU branch would see it: the same columns (tensorrt and cuda listed first,
    to check the sort) measured by NVML, one GPU with the energy counter, one with sampled power."""
    doc = copy.deepcopy(RECORDED)
    cols = []
    for target, source in (("tensorrt", "NVML: gpu0 NVIDIA H200 (sampled power every 20 ms)"),
                           ("cuda", "NVML: gpu0 NVIDIA H200 (energy counter)")):
        for c in copy.deepcopy(RECORDED["columns"]):
            c["target"] = target
            c["meter"] = {"name": "nvml", "kind": "measured", "source": source, "idle_watts": 75.0}
            c["joules_per_inference"]["kind"] = "measured"
            cols.append(c)
    doc["columns"] = copy.deepcopy(RECORDED["columns"]) + cols
    doc["skipped"] = []
    return doc


def test_table_from_recorded_compare():
    rows, skipped = gc.build_table([("json/compare-tiny.json", RECORDED)])
    assert [(r["model"], r["precision"], r["target"]) for r in rows] == [
        ("tiny.onnx", "fp32", "x86-cpu"), ("tiny.int8.onnx", "int8", "x86-cpu")]
    fp32, int8 = rows
    assert fp32["latency_ms"] == pytest.approx(0.400785)
    assert fp32["mj_per_inference"] == pytest.approx(1.74346)
    assert fp32["mj_ci95"] == pytest.approx([0.624854, 2.86208])
    assert fp32["watts"] == pytest.approx(4.33729)
    assert fp32["energy"] == "estimated" and fp32["meter"] == "estimate" and fp32["nvml_mode"] is None
    assert int8["latency_ratio"] == pytest.approx(2.23874) and int8["energy_ratio"] == pytest.approx(2.2403)
    assert int8["source"] == "json/compare-tiny.json"
    assert [s["target"] for s in skipped] == ["cuda", "tensorrt"]
    assert "CUDAExecutionProvider is not in this onnxruntime build" in skipped[0]["reason"]


def test_table_of_gpu_columns_is_sorted_and_names_the_nvml_reading():
    rows, skipped = gc.build_table([("json/compare-tiny.json", _gpu_shaped())])
    assert skipped == []
    assert [(r["precision"], r["target"]) for r in rows] == [
        ("fp32", "x86-cpu"), ("fp32", "cuda"), ("fp32", "tensorrt"),
        ("int8", "x86-cpu"), ("int8", "cuda"), ("int8", "tensorrt")]
    modes = {(r["precision"], r["target"]): r["nvml_mode"] for r in rows}
    assert modes[("fp32", "cuda")] == "energy counter"
    assert modes[("int8", "tensorrt")] == "sampled power"
    assert modes[("fp32", "x86-cpu")] is None
    assert gc.nvml_mode("NVML: gpu0 A (energy counter), gpu1 B (sampled power every 20 ms)") == \
        "energy counter + sampled power"


def test_summary_of_a_gpu_run(tmp_path):
    (tmp_path / "json").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "doctor.txt").write_text("Packages ...\n")
    (tmp_path / "detect.json").write_text(json.dumps({
        "gpu": {"names": ["NVIDIA H200"], "count": 1, "driver": "580.159.04", "energy_counter": [True]},
        "found": True, "forced": False, "reason": "nvidia-smi lists 1 GPU(s): GPU 0: NVIDIA H200; /dev/nvidia0 present"}))
    (tmp_path / "json" / "compare-tiny.json").write_text(json.dumps(_gpu_shaped()))
    (tmp_path / "json" / "targets.json").write_text(json.dumps({"targets": [
        {"name": "cuda", "usable": True, "reason": ""},
        {"name": "tensorrt", "usable": False, "reason": "TensorRT libraries are not on the library path"}]}))
    (tmp_path / "json" / "doctor.json").write_text(json.dumps({"versions": {"onnxruntime-gpu": "1.23.2"},
        "providers": [{"name": "CUDAExecutionProvider", "usable": True}], "problems": [],
        "meters": [{"name": "nvml", "readable": True, "detail": "1 GPU(s): NVIDIA H200"}]}))
    (tmp_path / "steps.tsv").write_text(
        "doctor\t0\t2.10\t120\tlogs/doctor.txt\tlogs/doctor.log\t/x/toolchain doctor \n"
        "compare-tiny\t0\t40.5\t300\tjson/compare-tiny.json\tlogs/compare-tiny.log\t/x/toolchain compare a b \n"
        "profile-tiny-tensorrt\t124\t240.00\t240\tjson/p.json\tlogs/p.log\t/x/toolchain profile a \n"
        "export-minilm\tskipped: out of time (budget 450s)\t0\t0\t\t\ttoolchain export minilm \n")
    s = gc.summarize(tmp_path)
    assert s["gpu"]["names"] == ["NVIDIA H200"]
    assert s["result"] == "GPU: 1 of 3 steps failed (profile-tiny-tensorrt)"
    assert s["cuda"] == {"usable": True, "reason": ""} and s["tensorrt"]["usable"] is False
    assert s["nvml"]["readable"] is True and s["nvml"]["modes_used"] == ["energy counter", "sampled power"]
    assert len(s["table"]) == 6
    assert {st["name"]: st["status"] for st in s["steps"]} == {
        "doctor": "ok", "compare-tiny": "ok", "profile-tiny-tensorrt": "timed out",
        "export-minilm": "skipped: out of time (budget 450s)"}
    assert json.loads((tmp_path / "summary.json").read_text())["table"] == s["table"]
    assert json.loads((tmp_path / "steps.json").read_text())[2]["rc"] == 124
    md = (tmp_path / "summary.md").read_text()
    assert "**Result: GPU: 1 of 3 steps failed (profile-tiny-tensorrt)**" in md
    assert "| tiny.onnx | fp32 | cuda | 0.401 | 1.00 | 1.743 | 0.6249-2.862 | 4.34 | measured | nvml (energy counter) |" in md
    assert "| tiny.int8.onnx | int8 | tensorrt | 0.897 | 2.24 | 3.906 |" in md
    assert "- target tensorrt: refused: TensorRT libraries are not on the library path" in md
    line = gc.one_line(s)
    assert "\n" not in line and line.startswith("gpu_check: GPU: 1 of 3 steps failed")


def test_x86_missing(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(RECORDED))
    assert gc.main(["x86-missing", str(p)]) == 1
    doc = _gpu_shaped()
    doc["columns"] = [c for c in doc["columns"] if c["target"] != "x86-cpu"]
    p.write_text(json.dumps(doc))
    assert gc.main(["x86-missing", str(p)]) == 0
    assert gc.main(["x86-missing", str(tmp_path / "absent.json")]) == 0


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0"),
                    reason="this machine has an NVIDIA GPU: the script would take its GPU branch")
def test_script_without_gpu(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OUT" and not k.startswith("GPU_CHECK_")}
    started = time.monotonic()
    p = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=120, env=env,
                       cwd=tmp_path)
    seconds = time.monotonic() - started
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU ("), p.stdout
    assert "cuda refused: CUDAExecutionProvider" in lines[0]
    assert seconds < 60

    s = json.loads((out / "summary.json").read_text())
    assert s["gpu"] is None and s["result"] == "no GPU"
    for why in ("nvidia-smi", "no /dev/nvidia0", "NVML unreadable"):
        assert why in s["reason"]
    # doctor ran on the CPU build and its output was saved, as tables and as JSON
    doctor = (out / "logs" / "doctor.txt").read_text()
    assert "nvml" in doctor and "CPUExecutionProvider" in doctor
    assert {m["name"] for m in json.loads((out / "json" / "doctor.json").read_text())["meters"]} >= {"nvml", "rapl"}
    # the cuda target is refused, with its one-line reason, in the summary, targets --json and the table
    assert s["cuda"]["usable"] is False and "CUDAExecutionProvider" in s["cuda"]["reason"]
    assert "\n" not in s["cuda"]["reason"]
    targets = {t["name"]: t for t in json.loads((out / "json" / "targets.json").read_text())["targets"]}
    assert targets["cuda"]["usable"] is False and targets["cuda"]["reason"] == s["cuda"]["reason"]
    assert "no: CUDAExecutionProvider" in (out / "logs" / "targets-cuda.txt").read_text()
    status = {st["name"]: st["status"] for st in s["steps"]}
    assert all(status[n] == "ok" for n in ("doctor", "doctor_json", "targets_json", "targets_cuda"))
    assert status["install_gpu_venv"] == "skipped: no GPU" and status["compare-resnet-50"] == "skipped: no GPU"
    assert s["table"] == [] and (out / "summary.md").read_text().startswith("# GPU check")
