"""``toolchain pipeline``: one run from a PyTorch model to a pruned, distilled, INT8 ONNX artifact with its
cost tables and sustainability report, each stage the library call of its own command.

Stages, in order (each writes ``RUN_DIR/<stage>/``)::

    baseline  export FP32, split the data (train.npz / calib.npz / eval.npz: the held-out test part, only
              ever evaluated), profile on the target (cost table)
    prune     energy-aware pruning fed by the baseline cost table (toolchain.prune); the models after its
              kept steps are the scheduler's pruning candidates (``search_points`` of them, spread out)
    search    the sustainability-aware scheduler (SuComp): the input model (FP32 and INT8) and every
              pruning ratio x distillation temperature x INT8 configuration is distilled, quantized,
              evaluated on the calibration part and measured on the target (windows interleaved); the
              best by a weighted objective of accuracy, energy and carbon within the accuracy budget,
              using less energy than the input (or the input itself), is chosen and its files kept; the
              Pareto front is kept for the report
    distill   the chosen student (the search's, promoted; skipped where the input was chosen)
    export    its ONNX file (promoted), checked against PyTorch (toolchain.export)
    quantize  its ONNX Runtime INT8 file: the chosen configuration of the target's preset (promoted)
    profile   the deliverable's cost table on the target
    compare   baseline, pruning only, INT8 only, distillation only and the full pipeline, measured
              together (windows interleaved) and evaluated on the held-out data
    report    Markdown, HTML and JSON (toolchain.report)

The package, read in the order of the flow:

    recipe    what a run does (:class:`Recipe`) and the recipe fields each stage reads
    runner    :class:`PipelineJob`, stage keys, the run directory's lock and manifest, resuming: :func:`run_pipeline`
    context   what every stage gets (:class:`Run`) and the library calls the stages share
    stages    the stage functions, in order
    search    the scheduler (:func:`objective`, :func:`choose`, the search stage)
    variants  the compare stage's variants

Other packages import from here (the package), never from its modules::

    from toolchain.pipeline import PipelineJob, Recipe, run_pipeline

    manifest = run_pipeline(PipelineJob("mnist-cnn", "x86-cpu", "builtin:mnist", "runs/mnist",
                                        recipe=Recipe.load("recipe.toml")))
"""

from toolchain.formats.manifest import Manifest, StageEntry
from toolchain.pipeline.context import Run
from toolchain.pipeline.recipe import STAGE_FIELDS, STAGES, Recipe
from toolchain.pipeline.runner import (
    PipelineJob,
    RunLock,
    check_run_dir,
    lock_run_dir,
    run_pipeline,
    stage_key,
)
from toolchain.pipeline.search import OBJECTIVE, choose, objective
from toolchain.pipeline.stages import STAGE_FUNCS

__all__ = ["OBJECTIVE", "STAGES", "STAGE_FIELDS", "STAGE_FUNCS", "Manifest", "PipelineJob", "Recipe",
           "Run", "RunLock", "StageEntry", "check_run_dir", "choose", "lock_run_dir", "objective", "run_pipeline",
           "stage_key"]
