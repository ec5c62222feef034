"""What every stage gets: the :class:`Run` (where the run lives, what it compresses, the manifest so far),
and the library calls several stages share (the baseline's data split, measuring options, evaluating an
ONNX model, distilling, quantizing, the scheduler's choice and the deliverable).

Heavy libraries (torch, onnxruntime) are imported inside the functions, so importing the pipeline (and
``toolchain pipeline --help``) stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from toolchain.core.errors import ToolchainError, option
from toolchain.formats.manifest import Manifest, StageEntry
from toolchain.pipeline.recipe import Recipe

if TYPE_CHECKING:
    from toolchain.targets.target import Target


# how the pipeline's errors name the job's fields: flags on the command line, parameters in the API
FROM = option("--from", "from_stage")
UNTIL = option("--until", "until")
OUTPUT = option("-o", "output")
DATA = option("--data", "data")
EVAL_DATA = option("--eval-data", "eval_data")
CALIB_DATA = option("--calib-data", "calib_data")

# a user's metric (Python API): (outputs, labels or None) -> a score, higher is better
Metric = Callable[[Any, Any], float]

# the baseline stage's split files: what trains (fine-tuning, distillation), what calibrates INT8 and
# selects (pruning steps, the scheduler's choice), and what is held out (only ever evaluated)
SPLIT_FILES = {"train": "train.npz", "calibration": "calib.npz", "test": "eval.npz"}
AGAIN = option("run the same command again", "call run_pipeline again with the same job")


@dataclass
class Run:
    """Everything a stage needs: where, what, and the manifest so far."""

    model: str
    target: Target
    data: str
    recipe: Recipe
    root: Path
    manifest: Manifest
    progress: Callable[[str], None] = lambda _text: None
    metric: Metric | None = None
    metric_name: str | None = None
    eval_data: str | None = None
    calib_data: str | None = None

    def dir(self, stage: str) -> Path:
        """The directory of a finished stage."""
        return self.root / stage

    def stage(self, name: str) -> StageEntry:
        """The manifest entry of stage ``name``."""
        return self.manifest.stages[name]

    def metrics(self, name: str) -> dict[str, Any]:
        """The metrics of the finished stage ``name``."""
        return self.manifest.stages[name].metrics or {}


def source_model(run: Run):
    """The model the run compresses, loaded (a :class:`toolchain.model.load.LoadedModel`)."""
    from toolchain.model.load import load_model

    return load_model(run.model)


class Splits(NamedTuple):
    """The baseline stage's three disjoint parts of the data (see :data:`SPLIT_FILES`)."""

    train: Any
    calibration: Any
    test: Any


def datasets(run: Run, base: Path | None = None) -> Splits:
    """The baseline stage's split: train, calibration (INT8 calibration and every selection) and test (held
    out: only evaluated, and the only data the report's accuracy comes from)."""
    from toolchain.data.load import load_dataset

    base = base or run.dir("baseline")
    return Splits(*(load_dataset(str(base / name), base / "model.onnx") for name in SPLIT_FILES.values()))


def profile_options(run: Run, profile_runs: int, base: Path | None = None):
    """How the stages measure on the target (the recipe's meter, batch and windows), on the baseline's
    evaluation data, with ``profile_runs`` profiled runs for the per-layer split."""
    from toolchain.profile.run import ProfileOptions

    r = run.recipe
    return ProfileOptions(meter=r.meter, repeats=r.repeats, window_s=r.window_s, idle_s=r.idle_s,
                          profile_runs=profile_runs, seq_len=r.seq_len, batch=r.batch,
                          data=str((base or run.dir("baseline")) / "eval.npz"))


def onnx_outputs(path: Path, data) -> Any:
    """First output of an ONNX model over ``data`` (token embeddings mean-pooled, as MiniLM is used)."""
    from toolchain.runtime.outputs import pooled, run_outputs
    from toolchain.runtime.session import create_session

    return pooled(run_outputs(create_session(path), data), data)


def onnx_metric(path: Path, data, reference, metric: Metric | None = None,
                metric_name: str | None = None) -> tuple[float, str]:
    """The user's ``metric`` (outputs, labels) where given; else accuracy % where the data has labels and
    the model gives logits, else cosine x 100 against the baseline's outputs ``reference``."""
    from toolchain.runtime.outputs import fidelity, is_classifier

    out = onnx_outputs(path, data)
    if metric is not None:
        return float(user_metric(metric, out, data.labels)), metric_name or metric_label(metric)
    classifier = data.labels is not None and is_classifier(path) and out.shape[1] > int(data.labels.max())
    fid = fidelity(reference, out, data.labels if classifier else None, classifier)
    if fid.accuracy_int8 is not None:
        return 100 * fid.accuracy_int8, "accuracy %"
    return 100 * fid.cosine, "cosine x 100"


def metric_label(metric: Metric) -> str:
    """How a user's metric is named in reports and stage keys: its qualified name."""
    return getattr(metric, "__qualname__", None) or type(metric).__name__


def user_metric(metric: Metric, outputs, labels) -> float:
    """Call the user's metric; an exception or a value that is not a finite number is one clear error."""
    import math

    try:
        value = float(metric(outputs, labels))
    except Exception as exc:  # the user's code: any failure is reported as theirs, in one line
        raise ToolchainError(f"the metric {metric_label(metric)} failed: {type(exc).__name__}: {exc}") from None
    if not math.isfinite(value):
        raise ToolchainError(f"the metric {metric_label(metric)} returned {value}, not a finite number")
    return value


def run_metric(run: Run, path: Path, data, reference) -> tuple[float, str]:
    """:func:`onnx_metric` with the run's metric (the user's, else accuracy / cosine)."""
    return onnx_metric(path, data, reference, run.metric, run.metric_name)


def distill_student(run: Run, student: str, out: Path, label: str, temperature: float) -> dict[str, Any]:
    """Distill the pruned ``student`` directory from the run's model (the teacher) on the baseline's
    training data into ``out``; returns its best epoch and metrics."""
    from toolchain.distill import DistillConfig, run_distill

    r = run.recipe
    config = DistillConfig(teacher=run.model, student=student, data=str(run.dir("baseline") / "train.npz"),
                           epochs=r.distill_epochs, lr=r.distill_lr, temperature=temperature, alpha=r.alpha,
                           seq_len=r.seq_len, seed=r.seed)
    report = run_distill(config, out, force=True, progress=lambda t: run.progress(f"{label}: {t}"))
    (out / "checkpoint.pt").unlink(missing_ok=True)  # finished: the resumable state is not an artifact
    return {"best_epoch": report["best_epoch"], "best": report["best"], "initial": report["initial_metrics"],
            "metric": report["metric"]}


def student_model(student_dir: Path, weights: Path):
    """The pruned model of ``student_dir`` with the distilled ``weights`` (a state_dict), in eval mode."""
    import torch

    from toolchain.model.load import load_model

    loaded = load_model(str(student_dir))
    loaded.module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    loaded.module.eval()
    return loaded


def quant_config(run: Run, label: str):
    """The target preset's INT8 configuration named ``label``."""
    from toolchain.targets.presets import preset

    p = preset(run.target.quant_preset)
    config = next((c for c in (p.static, p.transformer, *p.candidates) if c.label == label), None)
    if config is None:
        raise ToolchainError(f"the chosen INT8 configuration {label!r} is not in preset {p.name}",
                             hint=f"{FROM} search")
    return config


def quantize_onnx(run: Run, src: Path, dest: Path, config) -> dict[str, Any]:
    """INT8-quantize ``src`` into ``dest`` with ``config``, calibrated on the baseline's training data."""
    from toolchain.quantize import quantize_model

    calibration = datasets(run).calibration
    result = quantize_model(src, dest, config, calibration=calibration.take(0, run.recipe.calib_samples), force=True,
                            preset_name=run.target.quant_preset)
    return {"config": config.label, "preset": run.target.quant_preset, "size_fp32_bytes": result.size_fp32_bytes,
            "size_int8_bytes": result.size_int8_bytes}


def chosen(run: Run) -> dict[str, Any]:
    """The scheduler's chosen candidate (the search stage's metrics)."""
    return run.metrics("search")["chosen"]


def is_input(candidate: dict[str, Any]) -> bool:
    """Whether a search candidate is the input model itself (unpruned, undistilled; FP32 or INT8)."""
    return candidate.get("prune_dir") is None


def deliverable(run: Run) -> Path:
    """The artifact the run delivers: the chosen candidate's file. The input model unchanged where nothing
    beat it; its INT8 (quantize stage) where INT8 alone won; else the compressed student, INT8 or FP32."""
    c = chosen(run)
    if c["quant"]:
        return run.dir("quantize") / "model.int8.onnx"
    return run.dir("baseline") / "model.onnx" if is_input(c) else run.dir("export") / "model.onnx"
