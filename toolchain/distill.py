"""Knowledge distillation: train a (smaller) student to reproduce a teacher, with or without labels.

``toolchain distill`` loads both models (any :func:`toolchain.models.load_model` source), reads the data
as the teacher reads it (its preprocessing and tokenizer), splits it into train and validation samples
with the seed, and trains the student with :func:`toolchain.training.train`. After every epoch it writes
into the output directory, each file atomically (a temporary file in the directory, then ``os.replace``):

* ``student.pt``: the student's best state_dict so far (by validation accuracy on labelled data with
  logits, else by cosine to the teacher's outputs), a plain state_dict for ``torch.load(weights_only=True)``
  and ``--weights`` of the student's ``module:factory``;
* ``checkpoint.pt``: the last epoch's weights, optimizer and scheduler states, metrics and configuration;
* ``distill.json``: configuration, teacher/student/data sources and hashes, the loss in words (``loss``) and
  the hidden-state term (``hidden_states``), per-epoch metrics, best epoch.

The loss is the output term (KD on logits with labels, else label-free on logits or pooled embeddings; see
:mod:`toolchain.training`) plus, for a transformer student of its teacher's hidden size and depth (one
pruned by ``toolchain prune``: heads and MLP width cut), ``hidden_weight`` times the MSE (or cosine) between
their hidden states of every layer. ``hidden_weight`` None takes :func:`default_hidden_weight`: 1.0 for
such a pair, 0 (off) otherwise; the report says which applied and why.

Resume semantics: ``--resume`` continues the job recorded in ``checkpoint.pt`` after its last completed
epoch (an epoch cut short by Ctrl-C or a kill is redone from its start). Options not given take the
recorded values; options given must equal them, and the teacher, student and data must hash as recorded,
so the result equals an uninterrupted run: the cosine schedule spans the recorded ``epochs`` and every
epoch's shuffling and dropout are seeded from (seed, epoch). A different ``--epochs`` is another job
(``--force`` starts it over); resuming a finished job just reports it.

``--force`` over a previous distillation never loses it to an unfinished run: the new run is written in a
scratch directory beside the output (``.NAME.toolchain-tmp-PID``) and replaces the previous result only
once its last epoch is written. Interrupted (Ctrl-C, an error, a kill), the previous result stays as it was
and the scratch directory is removed (after a kill: by the next run). Such a run cannot be resumed; a run
into an output without a distillation writes there directly and can.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolchain import __version__
from toolchain.core.errors import ToolchainError, one_line, option
from toolchain.core.fsio import SCRATCH_TMP, atomic_write, new_scratch_dir, publish, remove_stale, write_json
from toolchain.data.dataset import Dataset

STUDENT_FILE, CHECKPOINT_FILE, REPORT_FILE = "student.pt", "checkpoint.pt", "distill.json"
FORMAT = 1

if TYPE_CHECKING:  # pragma: no cover
    from toolchain.training import Metrics


@dataclass
class DistillConfig:
    """What defines a distillation job (everything that changes its result)."""

    teacher: str
    student: str
    data: str
    epochs: int = 3
    lr: float | None = None  # None: :func:`default_lr` of the teacher's family
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.7
    label_free: str | None = None
    val_fraction: float = 0.1
    samples: int | None = None
    seq_len: int = 128
    weights: str | None = None
    input_shapes: tuple[str, ...] = ()
    weight_decay: float = 0.01
    seed: int = 0
    hidden_weight: float | None = None  # None: :func:`default_hidden_weight` of the pair
    hidden_loss: str = "mse"  # or "cosine": the distance between hidden states

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shapes"] = list(self.input_shapes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in known})
        config.input_shapes = tuple(config.input_shapes)
        return config


# peak AdamW learning rates by model family: 1e-3 takes a MiniLM student from cosine 0.981 to 0.803 (its
# pretrained weights are wrecked in the first steps), 5e-5 reaches 0.982; small CNNs trained here need 1e-3
TRANSFORMER_LR, DEFAULT_LR = 5e-5, 1e-3


def default_lr(model) -> float:
    """The learning rate for distilling from ``model`` (a LoadedModel): :data:`TRANSFORMER_LR` for
    transformers (a transformers model whose config has attention heads), else :data:`DEFAULT_LR`."""
    config = getattr(model.module, "config", None)
    return TRANSFORMER_LR if getattr(config, "num_attention_heads", None) else DEFAULT_LR


def default_hidden_weight(teacher, student) -> tuple[float, int, str]:
    """``(weight, layers, why)`` for distilling ``student`` from ``teacher`` (LoadedModels): the weight of the
    hidden-state term by default (:data:`~toolchain.losses.DEFAULT_HIDDEN_WEIGHT` for transformers of the same
    hidden size and layer count, else 0), the layers it would match (0: none) and the reason in words."""
    from toolchain.losses import DEFAULT_HIDDEN_WEIGHT, hidden_match

    layers, why = hidden_match(teacher, teacher.module, student, student.module)
    return (DEFAULT_HIDDEN_WEIGHT if layers else 0.0), layers, why


def _recorded(state: dict[str, Any]) -> DistillConfig:
    config = DistillConfig.from_dict(state["config"])
    if "hidden_weight" not in state["config"]:  # written before the hidden-state term: it trained without
        config.hidden_weight = 0.0
    return config


def recorded_config(output: str | os.PathLike) -> DistillConfig:
    """The configuration recorded in ``OUTPUT/checkpoint.pt`` (for ``--resume`` with options left out)."""
    return _recorded(_read_checkpoint(Path(output)))


def _read_checkpoint(out: Path) -> dict[str, Any]:
    import torch

    path = out / CHECKPOINT_FILE
    if not path.is_file():
        raise ToolchainError(f"{out}: no {CHECKPOINT_FILE} to resume", hint=f"run without {option('--resume', 'resume=True')} to start")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ToolchainError(f"{path}: unreadable checkpoint ({one_line(exc)})", hint=f"{option('--force', 'force=True')} starts over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ToolchainError(f"{path}: not a toolchain distill checkpoint", hint=f"{option('--force', 'force=True')} starts over")
    return state


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def _subset(ds: Dataset, idx: np.ndarray) -> Dataset:
    labels = None if ds.labels is None else ds.labels[idx]
    return Dataset(ds.source, {k: v[idx] for k, v in ds.feeds.items()}, labels, ds.synthetic, ds.subset_of)


def split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split: a permutation, the first ``ceil(n * val_fraction)`` for validation."""
    n = len(ds)
    n_val = math.ceil(n * val_fraction)
    if not 0 < val_fraction < 1 or n_val < 1 or n - n_val < 2:
        raise ToolchainError(f"{ds.source}: {n} samples leave too few for training and validation "
                             f"at {option('--val-fraction', 'val_fraction')} {val_fraction}", hint=f"more {option('--samples', 'samples')}")
    order = np.random.default_rng(seed).permutation(n)
    return _subset(ds, np.sort(order[n_val:])), _subset(ds, np.sort(order[:n_val]))


def _load_pair(config: DistillConfig):
    """Teacher and student; a user-module student without --input-shape takes the teacher's inputs."""
    import torch

    from toolchain.model.load import load_model

    teacher = load_model(config.teacher)
    shapes = list(config.input_shapes) or None
    with torch.random.fork_rng(devices=[]):  # a factory's random initialisation depends on the seed alone
        torch.manual_seed(config.seed)
        try:
            student = load_model(config.student, weights=config.weights, input_shapes=shapes)
        except ToolchainError as exc:
            if shapes or not exc.message.endswith("a user model needs its input shape"):
                raise
            torch.manual_seed(config.seed)
            given = [f"{s.name}:{'x'.join(map(str, s.shape))}:{s.dtype}" for s in teacher.inputs]
            student = load_model(config.student, weights=config.weights, input_shapes=given)
            student.inputs = list(teacher.inputs)
    return teacher, student


def _check_output(out: Path, inputs: list[str], *, resume: bool, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ToolchainError(f"{out} is a file; -o takes a directory")
    ours = [out / name for name in (STUDENT_FILE, CHECKPOINT_FILE, REPORT_FILE)]
    for inp in inputs:
        src = Path(inp).expanduser().resolve()
        if any(t.resolve() == src for t in ours):
            raise ToolchainError(f"{out}: refusing to overwrite an input ({inp}); choose another -o")
    if resume:
        _read_checkpoint(out)
    elif not force and any(p.exists() for p in ours):
        present = next(p.name for p in ours if p.exists())
        raise ToolchainError(f"{out} already holds a distillation ({present})",
                             hint=f"{option('--resume', 'resume=True')} continues it, {option('--force', 'force=True')} starts over")


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_distill(config: DistillConfig, output: str | os.PathLike, *, resume: bool = False, force: bool = False,
                progress: Callable[[str], None] | None = None,
                on_step: Callable[[int, int, int, float], None] | None = None,
                on_epoch: Callable[[int, Metrics], None] | None = None) -> dict[str, Any]:
    """Run (or ``resume``) the job ``config`` into the directory ``output``; return the report that is
    also written as ``distill.json``. ``on_epoch(epoch, metrics)`` runs after each epoch's files are
    written (tests interrupt there). Ctrl-C or SIGTERM stops with exit code 130 and a hint to resume."""
    from toolchain.data.dataset import DataOptions
    from toolchain.losses import describe_loss
    from toolchain.model.data import load_dataset_for
    from toolchain.training import evaluate, objective_for, outputs, train

    out = Path(output).expanduser().resolve()
    state = None
    if resume:
        state = _read_checkpoint(out)
        recorded = _recorded(state)
        if config.lr is None:
            config = replace(config, lr=recorded.lr)
        if config.hidden_weight is None:
            config = replace(config, hidden_weight=recorded.hidden_weight)
        if recorded != config:
            diff = [f"{f.name} {getattr(config, f.name)!r} (recorded {getattr(recorded, f.name)!r})"
                    for f in fields(DistillConfig) if getattr(config, f.name) != getattr(recorded, f.name)]
            raise ToolchainError(f"{option('--resume', 'resume=True')} continues the recorded job, but {diff[0]} differs",
                                 hint=f"leave options out to take the recorded ones, or {option('--force', 'force=True')} to start over")
    say = progress or (lambda _text: None)
    say("loading models")
    teacher, student = _load_pair(config)
    if config.lr is None:
        config = replace(config, lr=default_lr(teacher))
    config, hidden = _resolve_hidden(config, teacher, student)
    _check_output(out, [*teacher.input_paths, *student.input_paths, *([config.weights] if config.weights else [])],
                  resume=resume, force=force)
    say("loading data")
    data = load_dataset_for(config.data, teacher, DataOptions(samples=config.samples, seq_len=config.seq_len,
                                                              seed=config.seed))
    train_set, val_set = split(data, config.val_fraction, config.seed)
    objective = objective_for(student, student.module, train_set, teacher=teacher.module, teacher_loaded=teacher,
                              label_free=config.label_free)
    sources = {"teacher": {"source": config.teacher, "sha256": teacher.source_hash, "kind": teacher.kind,
                           "parameters": _params(teacher.module)},
               "student": {"source": config.student, "sha256": student.source_hash, "kind": student.kind,
                           "parameters": _params(student.module)},
               "data": {"source": data.source, "sha256": data.sha256, "samples": len(data), "train": len(train_set),
                        "val": len(val_set), "labelled": data.labels is not None, "synthetic": data.synthetic}}
    if state is not None:
        for key in ("teacher", "student", "data"):
            if state["sources"][key]["sha256"] != sources[key]["sha256"]:
                raise ToolchainError(f"the {key} ({sources[key]['source']}) changed since the checkpoint was written",
                                     hint=f"{option('--force', 'force=True')} starts over")
    # the same order of teacher outputs in every run: computed here once for the reference and the report
    val_reference = outputs(teacher, teacher.module, val_set)
    teacher_metrics = evaluate(teacher, teacher.module, val_set, reference=val_reference)
    initial = (state["initial"] if state is not None
               else evaluate(student, student.module, val_set, reference=val_reference).to_dict())
    metric = "accuracy" if teacher_metrics.accuracy is not None else "cosine"
    loss = describe_loss(objective, temperature=config.temperature, alpha=config.alpha, hidden_weight=config.hidden_weight,
                         hidden_loss=config.hidden_loss, layers=hidden["layers"])
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out.parent, f".{out.name}.{SCRATCH_TMP}-*")  # the scratch directory of a killed --force run
    # --force over a previous result: the new run is written in a scratch directory beside OUT and replaces
    # the previous result only once it is complete, so an interruption or a kill keeps the previous one
    work = out
    if force and not resume and any((out / name).exists() for name in (STUDENT_FILE, CHECKPOINT_FILE, REPORT_FILE)):
        work = new_scratch_dir(out)  # .NAME.toolchain-tmp-PID: remove_stale removes it once its process is gone
    out.mkdir(exist_ok=True)
    for name in (STUDENT_FILE, CHECKPOINT_FILE, REPORT_FILE):
        remove_stale(out, f".{name}.{SCRATCH_TMP}-*")  # left by a killed run

    best = dict(state["best"]) if state is not None else {"epoch": None, "value": None}
    seconds: list[float] = list(state["seconds"]) if state is not None else []
    clock = [time.perf_counter()]
    report: dict[str, Any] = {}

    def make_report(history: list[dict[str, Any]], status: str) -> dict[str, Any]:
        epochs = [{"epoch": i, **m, "seconds": round(seconds[i - 1], 3) if i - 1 < len(seconds) else None}
                  for i, m in enumerate(history, 1)]
        return {"tool": f"toolchain {__version__}", "status": status, "output_dir": str(out),
                "files": {"student": STUDENT_FILE, "checkpoint": CHECKPOINT_FILE, "report": REPORT_FILE},
                "config": config.to_dict(), **sources, "objective": objective, "loss": loss, "hidden_states": hidden,
                "metric": metric,
                "teacher_metrics": teacher_metrics.to_dict(), "initial_metrics": initial, "epochs": epochs,
                "best_epoch": best["epoch"], "best": {metric: best["value"]} if best["epoch"] else None,
                "student_file": str(out / STUDENT_FILE) if best["epoch"] else None}

    def on_checkpoint(ckpt: dict[str, Any]) -> None:
        seconds.append(time.perf_counter() - clock[0])
        latest = ckpt["history"][-1]
        value = latest[metric]
        if best["value"] is None or (value is not None and value > best["value"]):
            best.update(epoch=ckpt["epoch"], value=value)
            _save_torch(ckpt["model"], work / STUDENT_FILE)  # before the checkpoint that names it best
        _save_torch({**ckpt, "format": FORMAT, "config": config.to_dict(), "sources": sources, "initial": initial,
                     "best": dict(best), "seconds": list(seconds)}, work / CHECKPOINT_FILE)
        status = "done" if ckpt["epoch"] == config.epochs else "running"
        report.clear()
        report.update(make_report(ckpt["history"], status))
        write_json(work / REPORT_FILE, report)
        clock[0] = time.perf_counter()

    if state is not None and int(state["epoch"]) >= config.epochs:
        return make_report(state["history"], "done")  # a finished job: nothing left to run
    clock[0] = time.perf_counter()
    complete = False
    try:
        train(student, student.module, train_set, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
              teacher=teacher.module, teacher_loaded=teacher, temperature=config.temperature, alpha=config.alpha,
              label_free=config.label_free, weight_decay=config.weight_decay, seed=config.seed, progress=progress,
              val=val_set, val_reference=val_reference, on_step=on_step, on_epoch=on_epoch,
              checkpoint=on_checkpoint, resume_from=state, hidden_weight=config.hidden_weight,
              hidden_loss=config.hidden_loss)
        complete = True
    except KeyboardInterrupt:
        done = report.get("epochs") or (state["history"] if state is not None else [])
        where = f"after epoch {len(done)}/{config.epochs}" if done else "in epoch 1"
        if work != out:  # the previous result stays; nothing of this run is kept
            exc = ToolchainError(f"interrupted {where}; {out} still holds the previous distillation",
                                 hint=f"this run was not kept: run again with {option('--force', 'force=True')} to start over")
        else:
            if report:
                report["status"] = "interrupted"
                write_json(out / REPORT_FILE, report)
            exc = ToolchainError(f"interrupted {where}",
                                 hint=f"{option(f'`toolchain distill -o {output} --resume`', 'resume=True')} continues" if done or state
                                 else "nothing was saved yet")
        exc.exit_code = 130
        raise exc from None
    finally:
        if work != out and not complete:  # an unfinished run is dropped; the previous result is untouched
            shutil.rmtree(work, ignore_errors=True)
    if work != out:
        try:
            _publish_run(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already where the whole directory was swapped
    return report


def _resolve_hidden(config: DistillConfig, teacher, student) -> tuple[DistillConfig, dict[str, Any]]:
    """``config`` with its hidden-state weight decided (None: the pair's default), and the report's
    ``hidden_states``: weight, default weight, loss, layers matched (0: off) and why."""
    from toolchain.losses import HIDDEN_LOSSES

    default, layers, why = default_hidden_weight(teacher, student)
    if config.hidden_loss not in HIDDEN_LOSSES:
        raise ToolchainError(f"unknown hidden-state loss {config.hidden_loss!r}; choose {' or '.join(HIDDEN_LOSSES)}")
    if config.hidden_weight is None:
        config = replace(config, hidden_weight=default)
    elif not isinstance(config.hidden_weight, (int, float)) or not math.isfinite(config.hidden_weight) or config.hidden_weight < 0:
        raise ToolchainError(f"{option('--hidden-weight', 'hidden_weight')} must be a finite number >= 0, "
                             f"not {config.hidden_weight}")
    elif config.hidden_weight > 0 and not layers:
        raise ToolchainError(f"{option('--hidden-weight', 'hidden_weight')} {config.hidden_weight:g} needs a transformer "
                             f"teacher and student of the same hidden size and layer count: {why}",
                             hint=f"leave {option('--hidden-weight', 'hidden_weight')} out, or 0, to distill on outputs only")
    config = replace(config, hidden_weight=float(config.hidden_weight))
    if not layers:
        why = f"off: {why}"
    elif not config.hidden_weight:
        why = f"off: weight 0 (the default for this pair is {default:g}: {why})"
    return config, {"weight": config.hidden_weight, "default_weight": default, "loss": config.hidden_loss,
                    "layers": layers if config.hidden_weight else 0, "why": why}


def _publish_run(scratch: Path, out: Path) -> None:
    """Replace the previous distillation in ``out`` by the complete run in ``scratch``. When ``out`` holds
    nothing but a distillation the whole directory is swapped (:func:`~toolchain.core.fsio.publish`); files of
    the user's own there are kept, so then each file is moved in on its own (the report last: it is what
    names the run)."""
    ours = {STUDENT_FILE, CHECKPOINT_FILE, REPORT_FILE}
    foreign = [p for p in out.iterdir() if p.name not in ours and not p.name.startswith(tuple(f".{n}.{SCRATCH_TMP}-" for n in ours))]
    if not foreign:
        publish(scratch, out)
        return
    for name in (STUDENT_FILE, CHECKPOINT_FILE, REPORT_FILE):
        if (scratch / name).exists():
            publish(scratch / name, out / name)
        else:  # the previous run's file, which this run does not have (no best epoch): not left to mislead
            (out / name).unlink(missing_ok=True)
