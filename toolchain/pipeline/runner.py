"""Running the stages: the job, each stage's key, the run directory's lock and manifest, and resuming.

``RUN_DIR/manifest.json`` (:mod:`toolchain.formats.manifest`) records the inputs (model source hash, data,
target), the recipe, tool versions and, per stage: its key (a hash of the recipe fields it reads and of the
earlier stages' keys and output files), outputs with their sha256, metrics and seconds. A re-run skips a
stage whose key is unchanged and whose outputs are intact; a stage is written into a scratch directory and
published (renamed into place) when complete, so an interrupted stage leaves nothing half-written and is
simply run again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import atomic_dir, pid_alive, publish, remove_stale, sha256_file, sha256_text
from toolchain.formats.manifest import MANIFEST, Inputs, Manifest, StageEntry, hash_outputs
from toolchain.pipeline.context import API_WORDING, Run, Wording
from toolchain.pipeline.recipe import STAGES, Recipe
from toolchain.pipeline.stages import STAGE_FUNCS


@dataclass(frozen=True)
class PipelineJob:
    """One pipeline run: the model to compress (a source :func:`toolchain.model.load.load_model` takes),
    the deployment target (a name or file :func:`toolchain.targets.target.load_target` takes), real data
    (a quarter held out), the run directory, the recipe, and optionally the stages to run: from
    ``from_stage`` on (earlier ones reused, which must be done) until ``until``."""

    model: str
    target: str
    data: str
    output: str | Path
    recipe: Recipe = field(default_factory=Recipe)
    from_stage: str | None = None
    until: str | None = None


def digest(*parts: Any) -> str:
    """The sha256 of ``parts`` as canonical JSON (keys sorted)."""
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def stage_key(stage: str, recipe: Recipe, earlier: str) -> str:
    """The key of ``stage``: a hash of the recipe fields it reads (:data:`toolchain.pipeline.STAGE_FIELDS`)
    and of ``earlier``, the hash of the stages before it (their keys and output files)."""
    return digest(stage, recipe.stage_config(stage), earlier)


def _check_stages(job: PipelineJob, w: Wording) -> None:
    for name, value in ((w.from_stage, job.from_stage), (w.until, job.until)):
        if value is not None and value not in STAGES:
            raise ToolchainError(f"{name} {value!r} is not a stage", hint=f"stages: {', '.join(STAGES)}")
    if job.from_stage and job.until and STAGES.index(job.from_stage) > STAGES.index(job.until):
        raise ToolchainError(f"{w.from_stage} {job.from_stage} comes after {w.until} {job.until}")


def _run_dir(job: PipelineJob, input_paths: list[str], w: Wording) -> Path:
    root = Path(job.output).expanduser().resolve()
    if root in [Path(p).resolve() for p in input_paths] or (Path(job.data).exists() and
                                                             Path(job.data).resolve() == root):
        raise ToolchainError(f"{job.output}: refusing to write into an input; choose another {w.output}")
    if root.exists() and not root.is_dir():
        raise ToolchainError(f"{job.output}: exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _lock(root: Path, w: Wording) -> Path:
    lock = root / ".lock"
    if lock.exists():
        pid = lock.read_text().strip()
        if pid_alive(pid) and pid != str(os.getpid()):
            raise ToolchainError(f"{root}: another pipeline (pid {pid}) is running in this directory",
                                 hint=f"wait for it, or choose another {w.output}")
    lock.write_text(str(os.getpid()))
    return lock


def run_pipeline(job: PipelineJob, *, progress: Callable[[str], None] | None = None,
                 wording: Wording = API_WORDING) -> Manifest:
    """Run the job's stages (skipping finished ones whose inputs did not change) and return the manifest.

    ``progress`` receives one line of text as the run goes; ``wording`` is how errors name the job's fields
    (the command passes its flags). Raises :class:`ToolchainError` for bad inputs and for a stage that
    fails or is interrupted (exit code 130), after recording it in the manifest."""
    from toolchain.core.host import provenance_versions as versions
    from toolchain.model.load import load_model
    from toolchain.profile.run import check_usable
    from toolchain.targets.target import load_target

    _check_stages(job, wording)
    target = load_target(job.target)
    check_usable(target)
    say = progress or (lambda _text: None)
    say("loading the model")
    loaded = load_model(job.model)
    root = _run_dir(job, loaded.input_paths, wording)
    lock = _lock(root, wording)
    try:
        remove_stale(root, ".*.tmp-*")  # stage directories and manifest writes of a killed run
        remove_stale(root, ".*.old-*")  # a stage directory a killed run was replacing
        previous = Manifest.read(root / MANIFEST)
        data_hash = sha256_file(Path(job.data)) if Path(job.data).is_file() else None
        inputs = Inputs(model=job.model, model_hash=loaded.source_hash, task=loaded.task, data=job.data,
                        data_sha256=data_hash, target=target.to_dict())
        manifest = Manifest(inputs, asdict(job.recipe), versions(), previous.stages if previous else {})
        run = Run(job.model, target, job.data, job.recipe, root, manifest, say, wording)
        _run_stages(run, job)
        return manifest
    finally:
        lock.unlink(missing_ok=True)


def _run_stages(run: Run, job: PipelineJob) -> None:
    manifest, say, w = run.manifest, run.progress, run.wording
    earlier = digest(manifest.inputs.to_dict())
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
            raise ToolchainError(f"{w.from_stage} {job.from_stage}: the earlier stage {stage} is not done with "
                                 "these inputs", hint=f"run without {w.from_stage}, or {w.from_stage} {stage}")
        outputs = _run_stage(run, stage, key)
        earlier = digest(key, outputs)
        for later in STAGES[i + 1:]:  # their inputs may have changed
            if later in manifest.stages:
                manifest.stages[later] = manifest.stages[later].with_status("stale")
        manifest.write(run.root / MANIFEST)


def _run_stage(run: Run, stage: str, key: str) -> dict[str, str]:
    """Run ``stage`` in a scratch directory, publish it as ``RUN_DIR/stage`` and record it as done;
    returns its outputs (path -> sha256)."""
    manifest, path, final = run.manifest, run.root / MANIFEST, run.dir(stage)
    config = run.recipe.stage_config(stage)
    manifest.stages[stage] = StageEntry.running(key, config)
    manifest.write(path)
    started = time.perf_counter()
    run.progress(f"{stage}: running")
    with atomic_dir(final) as scratch:
        try:
            metrics = STAGE_FUNCS[stage](run, scratch)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            manifest.stages[stage] = manifest.stages[stage].with_status("interrupted" if interrupted else "failed")
            manifest.write(path)
            if interrupted or isinstance(exc, ToolchainError):
                raise _stage_error(run, stage, exc) from None
            raise
        publish(scratch, final)
    outputs = hash_outputs(run.root, final)
    manifest.stages[stage] = StageEntry("done", key, config, outputs=outputs, metrics=metrics,
                                        seconds=round(time.perf_counter() - started, 2),
                                        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reused=False)
    return outputs


def _stage_error(run: Run, stage: str, exc: BaseException) -> ToolchainError:
    """The error a failed or interrupted stage raises: its message with the stage; an interruption says
    which stages the next call reuses."""
    if isinstance(exc, ToolchainError):
        err = ToolchainError(f"{exc.message} (in stage {stage})", hint=exc.hint)
        err.exit_code = exc.exit_code
        return err
    done = [s for s in STAGES[:STAGES.index(stage)] if s in run.manifest.stages and run.stage(s).is_done]
    err = ToolchainError(f"interrupted (in stage {stage})",
                         hint=f"{run.wording.again}: {', '.join(done) or 'no stage'} will be reused")
    err.exit_code = 130
    return err
