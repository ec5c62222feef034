"""Issue 12: `toolchain prune` never writes over its own input (even with --force), a pruned.json that
names itself (or a cycle of pruned directories) is a clear error, and `toolchain distill --force` keeps the
previous result until the new run is complete. Tiny models, few samples, no fine-tuning: seconds each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError

PRUNE = ["--importance", "l2", "--ratio", "0.3", "--eval", "builtin:mnist", "--samples", "200", "--epochs", "0",
         "--max-accuracy-drop", "100"]  # these tests are about the files written, not the budget


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """mnist-cnn pruned once (no fine-tuning) into w/p1, with w the working directory of the tests."""
    root = tmp_path_factory.mktemp("w")
    r = CliRunner().invoke(main, ["prune", "mnist-cnn", *PRUNE, "-o", str(root / "p1")])
    assert r.exit_code == 0, r.output
    return root / "p1"


# ---------------------------------------------------------------------------------------------- prune


def test_prune_refuses_to_write_over_its_input_even_with_force(pruned, monkeypatch):
    monkeypatch.chdir(pruned.parent)
    before = snapshot(pruned.parent)
    runner = CliRunner()
    # output == input, spelled as the issue does (relative), and with a trailing slash / ./ prefix
    for out in ("p1", "./p1/", str(pruned)):
        one_line_error(runner.invoke(main, ["prune", "p1", *PRUNE, "-o", out, "--force"]), "refusing", "-o")
    one_line_error(runner.invoke(main, ["prune", "p1", *PRUNE, "-o", "p1"]), "refusing")  # not "pass --force"
    # output inside the input, input inside the output
    one_line_error(runner.invoke(main, ["prune", "p1", *PRUNE, "-o", "p1/inner", "--force"]), "is inside")
    one_line_error(runner.invoke(main, ["prune", "p1", *PRUNE, "-o", ".", "--force"]), "holds")
    assert snapshot(pruned.parent) == before  # nothing touched
    assert json.loads((pruned / "pruned.json").read_text())["source"] == "mnist-cnn"
    # the Python API refuses too, and the message names the parameter
    from toolchain.prune import PruneJob, run_prune

    with pytest.raises(ToolchainError, match=r"choose another output \[-o\]"):
        run_prune(PruneJob(model=str(pruned), eval_spec="builtin:mnist", output=str(pruned), ratio=0.3,
                           importance="l2", samples=200, finetune_epochs=0, force=True))
    assert snapshot(pruned.parent) == before


def test_prune_refuses_an_output_holding_a_pruned_source_in_the_chain(pruned, tmp_path):
    """p2 pruned from p1: writing p2's successor over p1 (an input further down the chain) is refused."""
    r = CliRunner().invoke(main, ["prune", str(pruned), *PRUNE, "-o", str(tmp_path / "p2")])
    assert r.exit_code == 0, r.output
    before = snapshot(pruned)
    one_line_error(CliRunner().invoke(main, ["prune", str(tmp_path / "p2"), *PRUNE, "-o", str(pruned), "--force"]),
                   "refusing")
    assert snapshot(pruned) == before


def _copy(src: Path, dst: Path, source: str) -> Path:
    dst.mkdir()
    (dst / "weights.pt").write_bytes((src / "weights.pt").read_bytes())
    meta = json.loads((src / "pruned.json").read_text())
    (dst / "pruned.json").write_text(json.dumps({**meta, "source": source}, indent=2))
    return dst


def test_a_pruned_dir_naming_itself_or_a_cycle_is_a_clear_error(pruned, tmp_path, monkeypatch):
    from toolchain.model.load import load_model

    monkeypatch.chdir(tmp_path)
    _copy(pruned, tmp_path / "self", "self")  # what `prune w/p1 -o w/p1 --force` used to write
    with pytest.raises(ToolchainError, match="names its own directory as its source"):
        load_model("self")
    _copy(pruned, tmp_path / "a", str(tmp_path / "b"))
    _copy(pruned, tmp_path / "b", "a")
    with pytest.raises(ToolchainError, match="form a cycle"):
        load_model("a")
    one_line_error(CliRunner().invoke(main, ["export", "self", "-o", str(tmp_path / "self.onnx")]), "names its own")
    one_line_error(CliRunner().invoke(main, ["export", "b", "-o", str(tmp_path / "b.onnx")]), "cycle")
    assert not (tmp_path / "self.onnx").exists()
    assert load_model(str(pruned)).kind.startswith("pruned")  # a sound chain still loads


# ---------------------------------------------------------------------------------------------- distill


def _config(**kw):
    from toolchain.distill import DistillConfig

    base = dict(teacher="mnist-cnn", student="mnist-cnn", data="random", samples=24, batch_size=8, epochs=1)
    return DistillConfig(**{**base, **kw})


def _scratch(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*"))


def test_distill_force_keeps_the_previous_result_until_the_new_run_is_complete(tmp_path):
    from toolchain.distill import run_distill

    out = tmp_path / "out"
    first = run_distill(_config(), out)
    assert first["status"] == "done"
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    seen = []

    def fail(epoch, metrics):
        seen.append((snapshot(out) == before, [p.name for p in _scratch(out)]))
        raise RuntimeError("disk on fire")

    new = _config(epochs=2, seed=1)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_distill(new, out, force=True, on_epoch=fail)
    # during the run the previous result was intact and the new one lived in an unmistakable scratch dir
    assert seen[0][0] and len(seen[0][1]) == 1 and seen[0][1][0].startswith(".out.toolchain-tmp-")
    assert snapshot(out) == before and _scratch(out) == []

    def stop(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(ToolchainError, match="still holds the previous distillation") as info:
        run_distill(new, out, force=True, on_epoch=stop)
    assert info.value.exit_code == 130
    assert snapshot(out) == before and _scratch(out) == []

    report = run_distill(new, out, force=True)  # complete: now it replaces the previous result
    assert report["status"] == "done" and len(report["epochs"]) == 2 and report["output_dir"] == str(out)
    on_disk = json.loads((out / "distill.json").read_text())
    assert on_disk["config"]["epochs"] == 2 and on_disk["config"]["seed"] == 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert (out / "notes.txt").read_text() == "mine"  # the user's own file is kept
    assert _scratch(out) == []
    again = run_distill(new, out, resume=True)  # resume semantics unchanged: a finished job is reported
    assert again["status"] == "done" and len(again["epochs"]) == 2


def test_distill_force_after_a_kill_removes_the_dead_runs_scratch(tmp_path):
    from toolchain.distill import run_distill

    out = tmp_path / "out"
    run_distill(_config(), out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = tmp_path / f".out.toolchain-tmp-{dead}"  # what a run killed mid-way leaves: out itself is intact
    left.mkdir()
    (left / "checkpoint.pt").write_bytes(b"half")
    result = CliRunner().invoke(main, ["distill", "--teacher", "mnist-cnn", "--student", "mnist-cnn", "--data",
                                       "random", "--samples", "24", "--batch-size", "8", "--epochs", "1", "--seed", "2",
                                       "-o", str(out), "--force", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "distill.json").read_text())["config"]["seed"] == 2
    assert _scratch(out) == []


def test_distill_force_into_an_output_without_a_distillation_stays_resumable(tmp_path):
    """Nothing to protect there: the run writes in OUT directly, so --resume continues it after a cut."""
    from toolchain.distill import run_distill

    out = tmp_path / "out"
    config = _config(epochs=2)

    def stop(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(ToolchainError, match="interrupted after epoch 1/2") as info:
        run_distill(config, out, force=True, on_epoch=stop)
    assert "--resume" in info.value.cli_text() and _scratch(out) == []
    assert json.loads((out / "distill.json").read_text())["status"] == "interrupted"
    resumed = run_distill(config, out, resume=True)
    assert resumed["status"] == "done" and [e["epoch"] for e in resumed["epochs"]] == [1, 2]
