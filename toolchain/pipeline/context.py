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
from typing import TYPE_CHECKING, Any

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


def datasets(run: Run, base: Path | None = None):
    """The baseline stage's split: (train, eval)."""
    from toolchain.data.load import load_dataset

    base = base or run.dir("baseline")
    return tuple(load_dataset(str(base / f"{part}.npz"), base / "model.onnx") for part in ("train", "eval"))


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


def onnx_metric(path: Path, data, reference) -> tuple[float, str]:
    """Accuracy % where the data has labels and the model gives logits, else cosine x 100 against the
    baseline's outputs ``reference``."""
    from toolchain.runtime.outputs import fidelity, is_classifier

    out = onnx_outputs(path, data)
    classifier = data.labels is not None and is_classifier(path) and out.shape[1] > int(data.labels.max())
    fid = fidelity(reference, out, data.labels if classifier else None, classifier)
    if fid.accuracy_int8 is not None:
        return 100 * fid.accuracy_int8, "accuracy %"
    return 100 * fid.cosine, "cosine x 100"


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

    train, _ = datasets(run)
    result = quantize_model(src, dest, config, calibration=train.take(0, run.recipe.calib_samples), force=True,
                            preset_name=run.target.quant_preset)
    return {"config": config.label, "preset": run.target.quant_preset, "size_fp32_bytes": result.size_fp32_bytes,
            "size_int8_bytes": result.size_int8_bytes}


def chosen(run: Run) -> dict[str, Any]:
    """The scheduler's chosen candidate (the search stage's metrics)."""
    return run.metrics("search")["chosen"]


def deliverable(run: Run) -> Path:
    """The artifact the run delivers: the INT8 model, or the FP32 one where the scheduler measured INT8
    to cost more on the target."""
    return run.dir("quantize") / "model.int8.onnx" if chosen(run)["quant"] else run.dir("export") / "model.onnx"
