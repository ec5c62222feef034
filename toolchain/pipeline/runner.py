"""Running the stages: the job, each stage's key, the run directory's lock and manifest, and resuming.

``RUN_DIR/manifest.json`` (:mod:`toolchain.formats.manifest`) records the inputs (model source hash, data,
target), the recipe, tool versions and, per stage: its key (a hash of the recipe fields it reads and of the
earlier stages' keys and output files), outputs with their sha256, metrics and seconds. A re-run skips a
stage whose key is unchanged and whose outputs are intact; a stage is written into a scratch directory and
published (renamed into place) when complete, so an interrupted stage leaves nothing half-written and is
simply run again. When a stage runs again (or fails), every later stage that was done is marked "stale":
it was built on what this stage wrote.

The run directory must not exist, be empty, or be a run directory already (its ``manifest.json`` is a
pipeline manifest): any other directory is refused untouched, so a stage's folder or a scratch name never
replaces a user's file. One process at a time runs in a directory: ``RUN_DIR/.lock`` is held with
``flock`` for the whole run (released by the system if the process dies) and names the holder's PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import (
    SCRATCH_OLD,
    SCRATCH_TMP,
    atomic_dir,
    publish,
    remove_stale,
    scratch_pid,
    sha256_file,
    sha256_text,
)
from toolchain.formats.manifest import MANIFEST, Inputs, Manifest, StageEntry, hash_outputs, is_run_manifest
from toolchain.pipeline.context import AGAIN, FROM, OUTPUT, UNTIL, Run
from toolchain.pipeline.recipe import STAGES, Recipe
from toolchain.pipeline.stages import STAGE_FUNCS


@dataclass(frozen=True)
class PipelineJob:
    """One pipeline run: the model to compress (a source :func:`toolchain.model.load.load_model` takes),
    the deployment target (a name or file :func:`toolchain.targets.target.load_target` takes), real data,
    the run directory, the recipe, and optionally the stages to run: from ``from_stage`` on (earlier ones
    reused, which must be done) until ``until``.

    ``eval_data`` (held out: only evaluated) and ``calib_data`` (INT8 calibration and selection) are data
    specs of their own; without them a built-in set's own split is used, else ``data`` is split
    (:mod:`toolchain.pipeline.splits`). ``metric(outputs, labels) -> float`` (higher is better; outputs a
    numpy array, the model's first output pooled as the toolchain does, labels an int array or None) replaces
    accuracy / cosine in the search, the comparison and the report (``metric_name`` names it; pruning's
    own steps are still judged by accuracy / cosine)."""

    model: str
    target: str
    data: str
    output: str | Path
    recipe: Recipe = field(default_factory=Recipe)
    from_stage: str | None = None
    until: str | None = None
    eval_data: str | None = None
    calib_data: str | None = None
    metric: Callable[[Any, Any], float] | None = None
    metric_name: str | None = None


def digest(*parts: Any) -> str:
    """The sha256 of ``parts`` as canonical JSON (keys sorted)."""
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def stage_key(stage: str, recipe: Recipe, earlier: str) -> str:
    """The key of ``stage``: a hash of the recipe fields it reads (:data:`toolchain.pipeline.STAGE_FIELDS`)
    and of ``earlier``, the hash of the stages before it (their keys and output files)."""
    return digest(stage, recipe.stage_config(stage), earlier)


def _check_stages(job: PipelineJob) -> None:
    for name, value in ((FROM, job.from_stage), (UNTIL, job.until)):
        if value is not None and value not in STAGES:
            raise ToolchainError(f"{name} {value!r} is not a stage", hint=f"stages: {', '.join(STAGES)}")
    if job.from_stage and job.until and STAGES.index(job.from_stage) > STAGES.index(job.until):
        raise ToolchainError(f"{FROM} {job.from_stage} comes after {UNTIL} {job.until}")


def _run_dir(job: PipelineJob, input_paths: list[str]) -> Path:
    root = Path(job.output).expanduser().resolve()
    data_paths = [Path(d) for d in (job.data, job.eval_data, job.calib_data) if d and Path(d).exists()]
    if root in [Path(p).resolve() for p in input_paths] or any(d.resolve() == root for d in data_paths):
        raise ToolchainError(f"{job.output}: refusing to write into an input; choose another {OUTPUT}")
    if root.exists() and not root.is_dir():
        raise ToolchainError(f"{job.output}: exists and is not a directory")
    check_run_dir(root, shown=str(job.output))
    root.mkdir(parents=True, exist_ok=True)
    return root


LOCK = ".lock"


def _is_our_lock(path: Path) -> bool:
    """Whether ``path`` looks like a lock file of ours: a small regular file holding a PID (or nothing yet)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 32:
            return False
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return text == "" or text.isdigit()


def check_run_dir(root: Path, shown: str | None = None) -> None:
    """Refuse (:class:`ToolchainError`, nothing touched) an existing directory that is neither empty nor
    a run directory of ours: one whose ``manifest.json`` is a pipeline manifest. The lock and scratch
    names of ours (``.NAME.toolchain-tmp-PID``) do not count as content."""
    if not root.is_dir():
        return
    if is_run_manifest(root / MANIFEST):
        return
    foreign = sorted(e.name for e in root.iterdir()
                     if not (scratch_pid(e.name) is not None or (e.name == LOCK and _is_our_lock(e))))
    if foreign:
        raise ToolchainError(f"{shown or root}: not empty and not a pipeline run directory (it holds {foreign[0]!r} "
                             f"and no pipeline {MANIFEST}); nothing was changed",
                             hint=f"choose a new or empty {OUTPUT}")


class RunLock:
    """The run directory's lock: ``RUN_DIR/.lock``, held with ``flock`` (exclusive) while the run lasts and
    holding the PID of its holder. A lock left by a dead process is not held any more and is simply taken."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Remove the lock file, then let go of it (in that order: a process waiting on this file sees it
        was removed and takes a new one)."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.path, self.fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = -1


def _same_file(path: Path, fd: int) -> bool:
    try:
        st, fst = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def lock_run_dir(root: Path) -> RunLock:
    """Take the run directory's lock or raise :class:`ToolchainError` naming the process that holds it."""
    path = root / LOCK
    for _ in range(100):  # retried only when the holder removed the file just as it was opened
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise ToolchainError(f"{root}: cannot create the lock {LOCK} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "starting"
            raise ToolchainError(f"{root}: another pipeline ({who}) is running in this directory",
                                 hint=f"wait for it, or choose another {OUTPUT}") from None
        if not _same_file(path, fd):  # its holder removed it between our open and our flock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return RunLock(path, fd)
    raise ToolchainError(f"{root}: cannot take the lock {LOCK} (it keeps changing)")


def run_pipeline(job: PipelineJob, *, progress: Callable[[str], None] | None = None) -> Manifest:
    """Run the job's stages (skipping finished ones whose inputs did not change) and return the manifest.

    ``progress`` receives one line of text as the run goes; errors name the job's fields with
    :func:`toolchain.core.errors.option` (flags on the command line). Raises :class:`ToolchainError` for bad inputs and for a stage that
    fails or is interrupted (exit code 130), after recording it in the manifest."""
    from toolchain.core.host import provenance_versions as versions
    from toolchain.model.load import load_model
    from toolchain.profile.run import check_usable
    from toolchain.targets.target import load_target

    _check_stages(job)
    target = load_target(job.target)
    check_usable(target)
    say = progress or (lambda _text: None)
    say("loading the model")
    loaded = load_model(job.model)
    root = _run_dir(job, loaded.input_paths)
    lock = lock_run_dir(root)
    try:
        check_run_dir(root, shown=str(job.output))  # again, now that no other run can change it
        remove_stale(root, f".*.{SCRATCH_TMP}-*")  # stage directories and manifest writes of a killed run
        remove_stale(root, f".*.{SCRATCH_OLD}-*")  # a stage directory a killed run was replacing
        previous = Manifest.read(root / MANIFEST)
        data_hash = sha256_file(Path(job.data)) if Path(job.data).is_file() else None
        inputs = Inputs(model=job.model, model_hash=loaded.source_hash, task=loaded.task, data=job.data,
                        data_sha256=data_hash, target=target.to_dict())
        manifest = Manifest(inputs, asdict(job.recipe), versions(), previous.stages if previous else {})
        run = Run(job.model, target, job.data, job.recipe, root, manifest, say, job.metric, job.metric_name,
                  job.eval_data, job.calib_data)
        _run_stages(run, job)
        return manifest
    finally:
        lock.release()


def _run_stages(run: Run, job: PipelineJob) -> None:
    from toolchain.pipeline.context import metric_label

    manifest, say = run.manifest, run.progress
    metric = (run.metric_name or metric_label(run.metric)) if run.metric else None
    held = [(d, sha256_file(Path(d)) if Path(d).is_file() else None) if d else None
            for d in (run.eval_data, run.calib_data)]
    extra = [*held, metric] if (*held, metric) != (None, None, None) else []  # older run directories: same keys
    earlier = digest(manifest.inputs.to_dict(), *extra)
    first = STAGES.index(job.from_stage) if job.from_stage else None
    last = STAGES.index(job.until) if job.until else len(STAGES) - 1
    for i, stage in enumerate(STAGES[:last + 1]):
        key = stage_key(stage, run.recipe, earlier)
        entry = manifest.stages.get(stage)
        forced = first is not None and i >= first
        if not forced and entry and entry.key == key and entry.is_done and entry.outputs_intact(run.root):
            manifest.stages[stage] = replace(entry, reused=True)
            say(f"{stage}: unchanged, reused")
            earlier = digest(key, entry.outputs)  # what later stages build on: these exact files
            continue
        if first is not None and i < first:
            raise ToolchainError(f"{FROM} {job.from_stage}: the earlier stage {stage} is not done with "
                                 "these inputs", hint=f"run without {FROM}, or {FROM} {stage}")
        outputs = _run_stage(run, stage, key)
        earlier = digest(key, outputs)
        manifest.write(run.root / MANIFEST)


def _run_stage(run: Run, stage: str, key: str) -> dict[str, str]:
    """Run ``stage`` in a scratch directory, publish it as ``RUN_DIR/stage`` and record it as done;
    returns its outputs (path -> sha256)."""
    manifest, path, final = run.manifest, run.root / MANIFEST, run.dir(stage)
    config = run.recipe.stage_config(stage)
    manifest.stages[stage] = StageEntry.running(key, config)
    for later in STAGES[STAGES.index(stage) + 1:]:  # built on what this stage wrote before: no longer done
        if later in manifest.stages and manifest.stages[later].status in ("done", "running"):
            manifest.stages[later] = manifest.stages[later].with_status("stale")
    manifest.write(path)
    started = time.perf_counter()
    run.progress(f"{stage}: running")
    try:
        with atomic_dir(final) as scratch:
            metrics = STAGE_FUNCS[stage](run, scratch)
            publish(scratch, final)
        outputs = hash_outputs(run.root, final)
    except BaseException as exc:
        interrupted = _is_interruption(exc)
        manifest.stages[stage] = manifest.stages[stage].with_status("interrupted" if interrupted else "failed")
        manifest.write(path)
        if interrupted or isinstance(exc, ToolchainError):
            raise _stage_error(run, stage, exc) from None
        raise
    manifest.stages[stage] = StageEntry("done", key, config, outputs=outputs, metrics=metrics,
                                        seconds=round(time.perf_counter() - started, 2),
                                        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reused=False)
    return outputs


def _is_interruption(exc: BaseException) -> bool:
    """Ctrl-C: a KeyboardInterrupt, or the error a library call made of one (exit code 130)."""
    return isinstance(exc, KeyboardInterrupt) or (isinstance(exc, ToolchainError) and exc.exit_code == 130)


def saved_stages(manifest: Manifest, before: str) -> list[str]:
    """The stages before ``before`` that are done (saved in the run directory, reused by the next call)."""
    return [s for s in STAGES[:STAGES.index(before)] if s in manifest.stages and manifest.stages[s].is_done]


def _stage_error(run: Run, stage: str, exc: BaseException) -> ToolchainError:
    """The error a failed or interrupted stage raises: its message with the stage and the stages that are
    saved (done, reused by the next call). A library's own advice on an interruption (``--resume``) is
    dropped: the pipeline resumes by itself."""
    done = saved_stages(run.manifest, stage)
    if _is_interruption(exc):
        inner = exc.message if isinstance(exc, ToolchainError) else ""
        what = inner if inner.startswith("interrupted") else "interrupted"  # "interrupted after epoch 1/2"
        saved = (f"{', '.join(done)} {'is' if len(done) == 1 else 'are'} saved and will be reused" if done
                 else f"no stage was saved yet; {stage} starts over")
        err = ToolchainError(f"{what} (in stage {stage}); {saved}", hint=f"{AGAIN} to continue")
        err.exit_code = 130
        return err
    assert isinstance(exc, ToolchainError)
    saved = f"saved: {', '.join(done)}" if done else "no stage saved yet"
    err = ToolchainError(f"{exc.message} (in stage {stage}; {saved})", hint=exc.hint)
    err.exit_code = exc.exit_code
    return err
