"""The pipeline never touches what is not its own (issue 12): a run directory must be new, empty or a run
directory of ours; scratch names are unmistakably ours and only those of dead processes are removed; the
lock admits exactly one process; an interrupted or failed stage says what is really saved and clears the
"done" of every stage after it. These drive the runner with stand-in stages: no model is trained."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core import fsio
from toolchain.core.errors import ToolchainError
from toolchain.pipeline import STAGES, PipelineJob, Recipe, run_pipeline


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (p.read_text() if p.is_file() else "<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture
def fake(monkeypatch):
    """Stand-in model loading and stages: each stage writes STAGE/out.txt; ``ran`` lists the stages run."""
    import toolchain.model.load
    import toolchain.pipeline

    monkeypatch.setattr(toolchain.model.load, "load_model",
                        lambda source: SimpleNamespace(input_paths=[], source_hash="hash", task="image"))
    ran: list[str] = []

    def make(stage):
        def stage_func(run, out: Path):
            ran.append(stage)
            (out / "out.txt").write_text(stage)
            return {"stage": stage}
        return stage_func

    for stage in STAGES:
        monkeypatch.setitem(toolchain.pipeline.STAGE_FUNCS, stage, make(stage))
    return SimpleNamespace(ran=ran, set=lambda stage, fn: monkeypatch.setitem(toolchain.pipeline.STAGE_FUNCS, stage, fn))


def _job(root: Path, **kw) -> PipelineJob:
    return PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", root, recipe=Recipe(), **kw)


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


# --- 1. the run directory and scratch names ---------------------------------------------------------------

def test_a_users_directory_is_refused_untouched(tmp_path, fake):
    root = tmp_path / "mine"
    (root / "baseline").mkdir(parents=True)  # named like a stage
    (root / "baseline" / "thesis.tex").write_text("years of work")
    (root / "notes.txt").write_text("keep")
    (root / f".draft.tmp-{_dead_pid()}").write_text("a hidden file of the user's, named like old scratch")
    (root / "manifest.json").write_text('{"format": "someone-elses"}')
    before = _tree(root)
    with pytest.raises(ToolchainError, match="not a pipeline run directory") as info:
        run_pipeline(_job(root))
    assert "\n" not in str(info.value) and fake.ran == []
    assert _tree(root) == before and not (root / ".lock").exists()
    r = CliRunner().invoke(main, ["pipeline", "-o", str(root)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert "choose a new or empty -o" in r.output and _tree(root) == before


def test_new_empty_and_our_own_run_directories_are_accepted(tmp_path, fake):
    new = tmp_path / "new" / "run"
    run_pipeline(_job(new))
    assert _manifest(new)["stages"]["report"]["status"] == "done" and not (new / ".lock").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".lock").write_text(str(_dead_pid()))  # left by a killed run before its manifest was written
    (empty / f".baseline.toolchain-tmp-{_dead_pid()}").mkdir()
    run_pipeline(_job(empty, until="prune"))
    assert sorted(p.name for p in empty.iterdir()) == ["baseline", "manifest.json", "prune"]
    # a run directory of ours: re-run from a stage; a user's hidden .tmp- file in it is kept
    dead = _dead_pid()
    (new / f".notes.tmp-{dead}").write_text("mine")
    (new / f".quantize.toolchain-tmp-{dead}").mkdir()  # what a killed run of ours left
    (new / f".profile.toolchain-old-{dead}").mkdir()
    fake.ran.clear()
    run_pipeline(_job(new, from_stage="quantize"))
    assert fake.ran == ["quantize", "profile", "compare", "report"]
    assert (new / f".notes.tmp-{dead}").read_text() == "mine"
    assert not list(new.glob(".*.toolchain-*"))


def test_remove_stale_removes_only_our_scratch_names_of_dead_processes(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    names = [f".model.onnx.tmp-{dead}", f".baseline.tmp-{dead}", f".baseline.old-{dead}", f".x.tmp-{dead}abc",
             f".model.onnx.toolchain-tmp-{alive}", f"model.toolchain-tmp-{dead}", f".report.toolchain-tmp-{dead}x"]
    ours_dead = [f".model.onnx.toolchain-tmp-{dead}", f".search.toolchain-tmp-{dead}", f".prune.toolchain-old-{dead}"]
    for name in names + ours_dead:
        (tmp_path / name).mkdir() if "search" in name or "prune" in name else (tmp_path / name).write_text("x")
    for pattern in (".*.tmp-*", ".*.old-*", ".*.toolchain-tmp-*", ".*.toolchain-old-*", "*", ".*"):
        fsio.remove_stale(tmp_path, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_scratch_names_are_ours(tmp_path):
    final = tmp_path / "a.json"
    assert fsio.scratch_path(final).name == f".a.json.toolchain-tmp-{os.getpid()}"
    assert fsio.scratch_path(final, fsio.SCRATCH_OLD).name == f".a.json.toolchain-old-{os.getpid()}"
    assert fsio.scratch_pid(f".a.json.toolchain-tmp-{os.getpid()}") == os.getpid()
    assert fsio.scratch_pid(".a.json.tmp-12") is None
    seen: list[str] = []
    fsio.atomic_write(final, lambda f: (seen.extend(p.name for p in tmp_path.iterdir()), f.write("{}")), "w")
    assert seen == [f".a.json.toolchain-tmp-{os.getpid()}"] and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with fsio.atomic_dir(tmp_path / "stage") as scratch:
        assert scratch.name == f".stage.toolchain-tmp-{os.getpid()}"
        (scratch / "f").write_text("1")
        fsio.publish(scratch, tmp_path / "stage")
    (tmp_path / "stage2").mkdir()
    with fsio.atomic_dir(tmp_path / "stage") as scratch:  # replacing a directory: renamed aside as ours
        (scratch / "g").write_text("2")
        fsio.publish(scratch, tmp_path / "stage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "stage", "stage2"]
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["g"]


# --- 2. the lock ------------------------------------------------------------------------------------------

TRIALS, RACERS = 50, 4


def _racer(roots: list[str], barrier, results, index: int) -> None:
    from toolchain.pipeline import lock_run_dir

    for trial, root in enumerate(roots):
        barrier.wait()
        try:
            lock = lock_run_dir(Path(root))
        except ToolchainError:
            lock = None
        results.put((trial, index, lock is not None))
        barrier.wait()  # everyone has tried while the winner holds it
        if lock is not None:
            lock.release()
        barrier.wait()


def test_exactly_one_of_several_racing_processes_takes_the_lock(tmp_path):
    roots = []
    for trial in range(TRIALS):
        root = tmp_path / f"run{trial}"
        root.mkdir()
        if trial % 2:  # a stale lock of a dead process: taken over, by one of them only
            (root / ".lock").write_text(str(_dead_pid()))
        roots.append(str(root))
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(RACERS, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(roots, barrier, results, i)) for i in range(RACERS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=180) for _ in range(TRIALS * RACERS)]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    winners = {t: sum(won for trial, _, won in got if trial == t) for t in range(TRIALS)}
    assert winners == dict.fromkeys(range(TRIALS), 1)
    assert not any((Path(r) / ".lock").exists() for r in roots)


def _hold(root: str, ready, done) -> None:
    from toolchain.pipeline import lock_run_dir

    lock = lock_run_dir(Path(root))
    ready.set()
    done.wait(60)
    lock.release()


def test_a_held_lock_names_its_holder_and_a_dead_ones_is_taken(tmp_path):
    from toolchain.pipeline import lock_run_dir

    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ToolchainError, match=f"another pipeline \\(pid {holder.pid}\\)"):
            lock_run_dir(tmp_path)
    finally:
        done.set()
        holder.join(60)
    (tmp_path / ".lock").write_text(str(_dead_pid()))
    lock = lock_run_dir(tmp_path)
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    lock.release()
    assert not (tmp_path / ".lock").exists()


# --- 3. interrupted and failed stages ---------------------------------------------------------------------

def _raiser(exc: BaseException):
    def stage_func(run, out):
        (out / "half.txt").write_text("half")
        raise exc
    return stage_func


def test_ctrl_c_late_in_the_run_names_the_saved_stages(tmp_path, fake):
    root = tmp_path / "run"
    run_pipeline(_job(root))
    fake.set("compare", _raiser(KeyboardInterrupt()))
    with pytest.raises(ToolchainError) as info:
        run_pipeline(_job(root, from_stage="compare"))
    message = str(info.value)
    assert info.value.exit_code == 130 and "\n" not in message
    assert "baseline, prune, search, distill, export, quantize, profile are saved" in message
    assert "nothing was saved" not in message and "in stage compare" in message
    stages = _manifest(root)["stages"]
    assert stages["compare"]["status"] == "interrupted"
    assert stages["report"]["status"] == "stale"  # built on the compare stage that is gone
    assert all(stages[s]["status"] == "done" for s in STAGES[:STAGES.index("compare")])
    assert not (root / "compare" / "half.txt").exists() and not list(root.glob(".*.toolchain-*"))


def test_an_interruption_a_library_reported_is_an_interruption(tmp_path, fake):
    # run_distill turns Ctrl-C into an error of exit code 130 that says "nothing was saved yet"
    root = tmp_path / "run"
    interrupted = ToolchainError("interrupted in epoch 1", hint="nothing was saved yet")
    interrupted.exit_code = 130
    fake.set("search", _raiser(interrupted))
    with pytest.raises(ToolchainError) as info:
        run_pipeline(_job(root))
    message = str(info.value)
    assert info.value.exit_code == 130 and "nothing was saved" not in message and "--resume" not in message
    assert message.startswith("interrupted in epoch 1 (in stage search); baseline, prune are saved")
    assert _manifest(root)["stages"]["search"]["status"] == "interrupted"
    fake.set("baseline", _raiser(KeyboardInterrupt()))
    with pytest.raises(ToolchainError, match="no stage was saved yet"):
        run_pipeline(_job(tmp_path / "other"))


def test_a_failed_stage_clears_the_done_of_every_later_stage(tmp_path, fake):
    root = tmp_path / "run"
    run_pipeline(_job(root))
    fake.set("compare", _raiser(ToolchainError("the meter went away", hint="plug it in")))
    with pytest.raises(ToolchainError) as info:
        run_pipeline(_job(root, from_stage="compare"))
    assert info.value.exit_code == 2
    assert str(info.value) == ("the meter went away (in stage compare; saved: baseline, prune, search, distill, export, "
                               "quantize, profile) (plug it in)")
    stages = _manifest(root)["stages"]
    assert stages["compare"]["status"] == "failed" and stages["report"]["status"] == "stale"
    # re-running an early stage clears the later ones at once, before it runs
    seen = {}

    def prune(run, out):
        seen.update({s: run.manifest.stages[s].status for s in STAGES[2:]})
        raise ToolchainError("no")

    fake.set("prune", prune)
    with pytest.raises(ToolchainError, match="saved: baseline\\)"):
        run_pipeline(_job(root, from_stage="prune"))
    assert "done" not in seen.values()
    assert [s for s, e in _manifest(root)["stages"].items() if e["status"] == "done"] == ["baseline"]


# --- recipe values of the wrong type ----------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('samples = "600"', "samples must be an integer, not '600'"),
    ("window_s = \"fast\"", "window_s must be a number"),
    ("search_temperatures = 4.0", "search_temperatures must be a list of numbers"),
    ("search_fp32 = 1", "search_fp32 must be true or false"),
    ("[prune]\nmax_steps = 2.5", "max_steps must be an integer"),
    ("meter = 3", "meter must be a string"),
])
def test_recipe_values_of_the_wrong_type_are_one_line_errors(tmp_path, line, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(line + "\n")
    with pytest.raises(ToolchainError, match=message):
        Recipe.load(recipe)
    r = CliRunner().invoke(main, ["pipeline", "--recipe", str(recipe), "-o", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and message in r.output
    assert not (tmp_path / "run").exists()
