"""Progress without a terminal: plain timestamped lines on stderr, rate-limited, the last one kept, none
under --quiet or --json, and what library code logs to the ``toolchain.progress`` logger shown with them.

A stderr that is a file or a pipe gets the lines; CliRunner's captured stderr (no file descriptor) gets
none unless ``TOOLCHAIN_PROGRESS=lines`` asks, which the command tests here set (with no grace period), so
that other tests' one-line errors stay one line however slow the machine is."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest
import torch
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.commands import common
from toolchain.commands.common import ProgressLines, progress_mode, stage_of, stamp, status

LINE = re.compile(r"^\[\d\d:\d\d\] \S")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_rate_limited_within_a_stage_and_the_last_is_kept():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines(out, started=40.0, interval=2.0, grace=0.0, clock=clock)
    for t, text in [(0.0, "prune: epoch 1/2, step 1/9"), (0.5, "prune: epoch 1/2, step 2/9"),
                    (1.0, "prune: epoch 1/2, step 3/9"), (2.5, "prune: epoch 1/2, step 4/9"),
                    (2.6, "prune: step 3: pruned conv1; fine-tuning"), (2.7, "prune: epoch 2/2, step 1/9"),
                    (2.8, "prune: epoch 2/2, step 2/9")]:
        clock.now = 100.0 + t
        lines(text)
    lines.close()
    assert out.getvalue().splitlines() == [
        "[01:00] prune: epoch 1/2, step 1/9", "[01:02] prune: epoch 1/2, step 4/9",  # 2 and 3: within 2 s
        "[01:02] prune: step 3: pruned conv1; fine-tuning",  # another stage: at once
        "[01:02] prune: epoch 2/2, step 1/9",  # back to the steps: a stage change again
        "[01:02] prune: epoch 2/2, step 2/9"]  # held back, then written at the end: always the last one


def test_nothing_for_a_block_that_ends_or_fails_within_the_grace():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines(out, grace=3.0, clock=clock)
    lines("loading")
    clock.now += 1
    lines("loading: step 1")
    lines.close()
    assert out.getvalue() == ""
    lines = ProgressLines(out, grace=3.0, interval=2.0, clock=clock)
    clock.now += 5
    lines("work: 1")
    lines("work: 2")
    lines.close(flush=False)  # a failure: the held-back line is dropped, the error line comes next
    assert out.getvalue().splitlines() == ["[00:05] work: 1"]


def test_a_held_back_line_is_written_once_due_without_another_call():
    out = io.StringIO()
    lines = ProgressLines(out, grace=0.05, interval=2.0)
    lines("exporting")  # within the grace: a timer writes it once the grace is over
    for _ in range(200):
        if out.getvalue():
            break
        time.sleep(0.01)
    lines.close()
    assert re.fullmatch(r"\[00:00\] exporting\n", out.getvalue())


def test_stages_and_stamps():
    assert stage_of("pipeline: prune: epoch 1/2, step 3/9, loss 0.2") == stage_of("pipeline: prune: epoch 2/2, step 1/9")
    assert stage_of("pipeline: prune: step 3: pruned a") != stage_of("pipeline: prune: epoch 1/2")
    assert stamp(42) == "[00:42]" and stamp(3725) == "[1:02:05]"


DISTILL = ["distill", "--teacher", "tiny-bert", "--student", "tiny-bert", "--data", "random", "--samples", "24",
           "--seq-len", "8", "--epochs", "1", "--batch-size", "8", "--label-free", "mse"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_go_to_files_and_pipes_not_to_captured_streams(tmp_path, monkeypatch):
    monkeypatch.delenv("TOOLCHAIN_PROGRESS", raising=False)
    with open(tmp_path / "log", "w") as log:
        assert progress_mode(log) == "lines"  # `toolchain ... > log 2>&1`, a CI pipe
    assert progress_mode(io.StringIO()) == "none" and progress_mode(Terminal()) == "spinner"
    assert progress_mode(log) == "none"  # closed
    monkeypatch.setenv("TOOLCHAIN_PROGRESS", "lines")
    assert progress_mode(io.StringIO()) == "lines" and progress_mode(Terminal()) == "lines"
    monkeypatch.setenv("TOOLCHAIN_PROGRESS", "off")
    assert progress_mode(Terminal()) == "none"


@pytest.fixture
def no_grace(monkeypatch):
    """Lines on CliRunner's stderr, from the first second."""
    monkeypatch.setenv("TOOLCHAIN_PROGRESS", "lines")
    monkeypatch.setattr(common, "LINE_GRACE_S", 0.0)


def test_a_command_prints_progress_lines_off_a_terminal(no_grace, tmp_path):
    r = CliRunner().invoke(main, [*DISTILL, "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines and all(LINE.match(line) for line in lines), r.stderr
    assert re.search(r"\] distill(: loading models)?$", lines[0]), lines  # the next within 2 s: held back
    assert all(line.split("] ", 1)[1].startswith("distill") for line in lines)
    assert re.search(r"distill: epoch 1/1, step 3/3, loss \d", lines[-1]), lines  # the last step, always
    assert "distill tiny-bert from tiny-bert" in r.stdout  # the result as ever, on stdout


@pytest.mark.parametrize("flags", [["-q"], ["--json"], []], ids=["quiet", "json", "captured"])
def test_quiet_json_and_captured_stderr_print_no_progress(flags, no_grace, tmp_path, monkeypatch):
    if not flags:  # CliRunner's stderr as it is: no file descriptor, so no lines (as before)
        monkeypatch.delenv("TOOLCHAIN_PROGRESS")
    root, sub = (flags, []) if flags == ["-q"] else ([], flags)
    r = CliRunner().invoke(main, [*root, *DISTILL, *sub, "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    if sub:
        assert json.loads(r.stdout)["status"] == "done"


def test_lines_logged_to_the_progress_logger_show_while_a_command_runs(no_grace, tmp_path, monkeypatch):
    import toolchain.model.load as load

    original = load.load_model
    log = logging.getLogger("toolchain.progress")

    def loading(source, **kw):  # what a catalogue model fine-tuned on first use logs
        log.info("fine-tuning %s: epoch %d/%d, step %d/%d", source, 1, 1, 2, 2)
        return original(source, **kw)

    monkeypatch.setattr(load, "load_model", loading)
    r = CliRunner().invoke(main, [*DISTILL, "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert re.search(r"^\[\d\d:\d\d\] distill: fine-tuning tiny-bert: epoch 1/1, step 2/2$", r.stderr, re.M), r.stderr
    assert log.handlers == [] and log.propagate  # detached once the command is over
    r = CliRunner().invoke(main, ["-q", *DISTILL, "-o", str(tmp_path / "q")])
    assert r.exit_code == 0 and r.stderr == "", r.stderr


def test_the_spinner_on_a_terminal_shows_logged_lines(monkeypatch):
    from rich.status import Status

    monkeypatch.delenv("TOOLCHAIN_PROGRESS", raising=False)
    shown: list[str] = []
    monkeypatch.setattr(Status, "update", lambda self, status=None, **kw: shown.append(str(status)))
    monkeypatch.setattr("sys.stderr", Terminal())
    with status("loading m", quiet=False) as say:
        logging.getLogger("toolchain.progress").info("fine-tuning m: step %d/%d", 1, 4)
        say("reading")
    assert shown == ["loading m: fine-tuning m: step 1/4", "loading m: reading"]
