"""The command line: lazy imports, help, JSON output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from toolchain.cli import COMMANDS, main

HEAVY = ("torch", "onnxruntime", "transformers", "onnx", "onnxscript", "torch_pruning")


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in COMMANDS])
def test_help_imports_nothing_heavy(argv):
    code = (
        "import sys\n"
        "from toolchain.cli import main\n"
        f"sys.argv = ['toolchain'] + {argv!r}\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out
    assert "Usage:" in out


def test_root_help_lists_every_command_and_is_fast():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "toolchain.cli", "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    for name in COMMANDS:
        assert name in out.stdout
    # a loose bound (the 0.5 s target is measured in benchmarks/): catches an accidental torch import (~2 s)
    assert elapsed < 1.5


def test_models_json_lists_catalogue_with_weight_labels():
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 0
    entries = {e["name"]: e for e in json.loads(result.output)["models"]}
    for name in ("resnet-18", "resnet-50", "mobilenet-v2", "vit-small", "bert-base", "distilbert", "gpt2"):
        assert entries[name]["kind"] == "random-weights"
    assert entries["minilm"]["kind"] == "pretrained"
    assert entries["mnist-cnn"]["kind"] == "pretrained"


def test_doctor_json_reports_cpu_provider_and_meters():
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    cpu = [p for p in report["providers"] if p["name"] == "CPUExecutionProvider"]
    assert cpu and cpu[0]["usable"]
    assert {m["name"] for m in report["meters"]} == {"rapl", "nvml", "jetson", "estimate"}
    for meter in report["meters"]:
        assert meter["readable"] or meter["fix"], meter  # an unreadable meter always says how to fix it
    assert set(report["cpu"]["features"]) >= {"AVX2", "AVX512-VNNI", "AMX"}


def test_unknown_model_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "no-such-model", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: unknown model")
    assert "Traceback" not in result.output


def test_inspect_corrupt_file_is_one_line_error(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not protobuf" * 10)
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
