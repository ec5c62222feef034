"""The layout the README describes: a package per stage, modules under 400 lines, imports in one direction
(checked by import-linter, see pyproject.toml), no module importing another module's private name."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolchain"
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_module_imports_another_modules_private_name():
    offenders = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolchain"):
                offenders += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and a.name != "__version__"]
    assert offenders == []


def test_every_stage_is_a_package():
    for name in ("core", "data", "formats", "model", "runtime", "energy", "targets", "prune", "export", "quantize",
                 "profile", "report", "pipeline", "commands"):
        assert (PACKAGE / name / "__init__.py").is_file(), name


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_hold():
    """Layers, the torch-free ONNX side and no cycles (the contracts in pyproject.toml)."""
    exe = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(exe), "--no-cache"], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stdout[-3000:]


def test_a_new_meter_is_one_module_and_one_registry_entry(tmp_path, monkeypatch):
    """The README's recipe: a module with probe/open/from_options, one METERS entry; target files,
    open_meter and probe_all then know it."""
    import time
    import types

    from toolchain.energy import METERS, EnergyReading, MeterStatus, open_meter, probe_all
    from toolchain.targets.target import load_target

    class CounterMeter:
        name, measured, source, min_window_s = "counter", True, "a fake cumulative counter", 0.0

        def begin(self):
            return time.perf_counter()

        def end(self, token):
            seconds = time.perf_counter() - token
            return EnergyReading({"board": 5.0 * seconds}, 5.0 * seconds, seconds)

        def close(self):
            pass

    module = types.ModuleType("counter")
    module.probe = lambda: MeterStatus("counter", True, "always readable")
    module.open = CounterMeter
    module.from_options = lambda options: CounterMeter()
    monkeypatch.setitem(METERS, "counter", module)

    meter = open_meter("counter")
    reading = meter.end(meter.begin())
    assert reading.total_j >= 0 and meter.name == "counter"
    assert [s.name for s in probe_all()][-1] == "counter"
    toml = (Path(__file__).resolve().parents[1] / "targets" / "x86-cpu.toml").read_text()
    f = tmp_path / "t.toml"
    f.write_text(toml.replace('names = ["rapl"]', 'names = ["counter"]'))
    assert load_target(str(f)).meters == ("counter",)


def test_a_new_importance_criterion_is_one_callable_and_one_registry_entry(monkeypatch):
    """The README's recipe: one builder in IMPORTANCES; the config accepts it and pruning ranks by it."""
    import torch
    from torch import nn

    from toolchain.core.errors import ToolchainError
    from toolchain.model.spec import InputSpec, LoadedModel
    from toolchain.prune import IMPORTANCES, PruneConfig, apply_pruning

    with pytest.raises(ToolchainError, match="unknown importance 'fpgm'"):
        PruneConfig(importance="fpgm", ratio=0.5).validate()

    def fpgm():
        import torch_pruning as tp

        return tp.importance.FPGMImportance()

    monkeypatch.setitem(IMPORTANCES, "fpgm", fpgm)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()
    loaded = LoadedModel(module=net, inputs=[InputSpec("x", (1, 1, 8, 8))], output_names=["y"], source="test",
                         kind="user", description="test", source_hash="0" * 64, task="image-classification")
    apply_pruning(loaded, net, (torch.zeros(2, 1, 8, 8),), {net[0]: 0.5}, [net[3]],
                  PruneConfig(importance="fpgm", ratio=0.5), None)
    assert net[0].out_channels == 8 and net(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
