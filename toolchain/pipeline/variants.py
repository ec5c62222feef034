"""The compare stage: each technique alone beside the full pipeline, measured together on the target.

Variants: the baseline (FP32), pruning only (the most pruned step within the budget, fine-tuned, FP32),
INT8 only (the baseline quantized with the configuration the scheduler chose, the search's own file),
distillation only (a uniformly narrower student, distilled) and, last, what the run delivers (the full
pipeline's student, with its INT8 counterpart beside it where the scheduler kept FP32; or the input
itself where nothing beat it). All are measured with their windows interleaved and evaluated on the
held-out test part of the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolchain.core.fsio import write_json
from toolchain.formats.costs import MeasurementRecord
from toolchain.pipeline.context import (
    Run,
    chosen,
    datasets,
    deliverable,
    distill_student,
    is_input,
    onnx_outputs,
    profile_options,
    quant_config,
    quantize_onnx,
    run_metric,
    source_model,
    student_model,
)


def distillation_only(run: Run, out: Path, example_data) -> Path:
    """The "distillation only" variant: every layer (the head aside) at ``distill_only_width`` of its width,
    distilled at the chosen temperature (the first of the search's where the input was chosen) and exported;
    returns its ONNX path."""
    import copy
    from dataclasses import replace

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.prune import (
        PruneConfig,
        PruneResult,
        apply_pruning,
        attention_blocks,
        example_args,
        output_layer,
        prune_transformer_units,
        save_pruned,
        transformer_units,
    )

    loaded = source_model(run)
    narrow = copy.deepcopy(loaded.module)
    head = output_layer(narrow)
    config = PruneConfig(importance="l2", ratio=1 - run.recipe.distill_only_width, round_to=run.target.round_to)
    example = example_args(loaded, example_data)
    if attention_blocks(narrow):  # heads and MLP width of every layer
        prune_transformer_units(loaded, narrow, example, transformer_units(narrow), replace(config, step=config.ratio))
    else:
        apply_pruning(loaded, narrow, example, float(config.ratio), [dict(narrow.named_modules())[head]] if head else [],
                      config, None)
    student_dir = out / "distill-only-student"
    save_pruned(PruneResult(module=narrow, base_metric=0.0, final_metric=0.0, metric_name="", params_before=0,
                            params_after=0, macs_before=0, macs_after=0, reduction=0.0,
                            reduction_kind="uniform width"), loaded, run.model, student_dir,
                config, {}, force=True)
    distill_student(run, str(student_dir), out / "distill-only", "compare: distillation only",
                    chosen(run)["temperature"] or run.recipe.search_temperatures[0])
    export_model(student_model(student_dir, out / "distill-only" / "student.pt"), out / "distill-only.onnx",
                 ExportOptions(parity=False))
    return out / "distill-only.onnx"


def onnx_params(path: Path) -> int:
    """Weights in an ONNX graph: elements of float initializers, or of the integer weights they were
    quantized to (scales and zero points not counted)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n > 1 and not init.name.endswith(("_scale", "_zero_point")):
            total += n
    return total


def delivered_name(c: dict[str, Any]) -> str:
    """The report's name of the deliverable's row, from the chosen candidate."""
    if is_input(c):
        return "delivered: the input model, unchanged" if not c["quant"] else f"delivered: the input model, {c['quant']}"
    return f"full pipeline ({c['label']})"


def stage_compare(run: Run, out: Path) -> dict[str, Any]:
    """The single techniques beside the full pipeline, measured together on the target and evaluated on
    the held-out test part."""
    import os
    import shutil

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model
    from toolchain.profile.run import compare_models

    held = datasets(run).test
    search, c = run.metrics("search"), chosen(run)
    base = run.dir("baseline") / "model.onnx"
    run.progress("compare: pruning only (the most pruned step within the budget, fine-tuned, FP32)")
    export_model(load_model(str(run.dir("prune") / "within-budget")), out / "pruning-only.onnx", ExportOptions(parity=False))
    run.progress("compare: INT8 only")
    searched = (search.get("input_int8") or {}).get(search["int8"])
    if searched and (run.dir("search") / searched).is_file():  # the search quantized the input already
        try:
            os.link(run.dir("search") / searched, out / "int8-only.onnx")
        except OSError:
            shutil.copy2(run.dir("search") / searched, out / "int8-only.onnx")
    else:
        quantize_onnx(run, base, out / "int8-only.onnx", quant_config(run, search["int8"]))
    run.progress("compare: distillation only (a uniformly narrower student, distilled)")
    distilled = distillation_only(run, out, held)
    variants = {"baseline (FP32)": base, "pruning only": out / "pruning-only.onnx", "INT8 only": out / "int8-only.onnx",
                "distillation only": distilled}
    if not is_input(c) and c["quant"] is None and search.get("int8_counterpart"):
        variants["prune + distill + INT8"] = run.dir("quantize") / "model.int8.onnx"  # beside the FP32 choice
    delivered = deliverable(run)
    if is_input(c) and c["quant"] and c["quant"] == search["int8"]:
        delivered = out / "int8-only.onnx"  # the same file as "INT8 only": measured once
    variants[delivered_name(c)] = delivered
    unique = list(dict.fromkeys(str(p) for p in variants.values()))
    run.progress(f"compare: measuring {len(unique)} models on the target, windows interleaved")
    comparison = compare_models(unique, [run.target], profile_options(run, run.recipe.profile_runs), progress=run.progress)
    reference = onnx_outputs(base, held)
    rows = []
    for name, path in variants.items():
        table = comparison.tables[(str(path), run.target.name)]
        metric, metric_name = run_metric(run, path, held, reference)
        rows.append({"name": name, "onnx": str(path), "metric": metric, "metric_name": metric_name,
                     "params": onnx_params(path), "size_bytes": path.stat().st_size, "measurement": table.measurement,
                     "cost_table": json.loads(table.to_json()), "delivered": name == delivered_name(c)})
    write_json(out / "variants.json", rows)
    measured = [MeasurementRecord.from_dict(row["measurement"]) for row in rows]
    test = (run.metrics("baseline").get("splits") or {}).get("test") or {}
    shown = test.get("source", held.source) if test.get("how") in (None, "given") or "own" in test["how"] else test["how"]
    return {"evaluated_on": {"source": shown, "samples": len(held)},
            "variants": [{k: v for k, v in row.items() if k not in ("measurement", "cost_table")}
                         | {"joules_per_inference": m.joules_per_inference.net.mean,
                            "latency_ms": m.latency_ms.median_ms} for row, m in zip(rows, measured, strict=True)]}
