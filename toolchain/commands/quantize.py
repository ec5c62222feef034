"""toolchain quantize"""

from __future__ import annotations

import click

from toolchain.commands.common import (
    FiniteFloatRange,
    emit,
    fmt_bytes,
    is_quiet,
    json_option,
    json_safe_stdout,
    status,
)
from toolchain.commands.profile import check_threads_option

MAX_RUNS = 10_000  # timed runs per model and batch size


def _floats(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers like 0.485,0.456,0.406") from None


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{text!r}: expected HxW like 224x224")
    return int(parts[0]), int(parts[1])


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers like 1,8") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: batch sizes must be positive")
    return values


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the INT8 .onnx file.")
@click.option("--calib", "calib", metavar="DATA",
              help="Calibration data: an .npz of named inputs, a folder of images, a .txt file (one sample a line), "
                   "builtin:mnist, builtin:drugreviews, or random (synthetic).")
@click.option("--eval", "eval_", metavar="DATA", help="Held-out evaluation data (default: the samples of --calib after the calibration ones).")
@click.option("--calib-samples", type=click.IntRange(1), default=128, show_default=True, help="Calibration samples.")
@click.option("--eval-samples", type=click.IntRange(1), default=256, show_default=True, help="Evaluation samples.")
@click.option("--target", "preset_name", metavar="TARGET",
              help="A target (`toolchain targets`, or a TOML file): its quantization preset, and its execution "
                   "providers for timing unless --provider is given; or a preset name: x86-vnni, x86, openvino, arm64, gpu "
                   "(default: this machine's CPU).")
@click.option("--auto", is_flag=True, help="Measure every candidate configuration of the preset here and keep the fastest "
                                            "within the accuracy budget (when none is, the accuracy guard runs on the "
                                            "fastest one), or recommend keeping FP32.")
@click.option("--mode", type=click.Choice(["static", "dynamic"]), help="static (calibrated) or dynamic (int8 weights). "
              "Default: the preset's (dynamic for transformers on CPU).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--activations", type=click.Choice(["uint8", "int8"]), help="Activation type (default: the preset's).")
@click.option("--weights", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True, help="Weight type.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (avoids saturation on CPUs without VNNI).")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--adaround", is_flag=True, help="Static QDQ: learn the rounding of the int8 weights (AdaRound) on the "
              "calibration set, per output channel where it beats rounding to nearest (minutes on a CNN).")
@click.option("--bias-correction", is_flag=True, help="Static QDQ: fold the mean output shift each layer's weight "
              "rounding causes on the calibration set into its bias (depthwise nets: EfficientNet-Lite0 80.8% -> "
              "88.7% top-1 agreement with FP32 in exact int8 arithmetic).")
@click.option("--exclude", multiple=True, metavar="NODE", help="An ONNX node name to keep in FP32 (repeat; names of "
              "the pre-processed graph, as the guard's report lists them).")
@click.option("--max-accuracy-drop", type=FiniteFloatRange(0, 100), help="Accuracy budget in points (top-1 disagreement "
              "without labels), always checked; beyond it, the most sensitive nodes are kept in FP32, a group at a "
              "time, and if that cannot meet it nothing is written (exit 2). Default 1.")
@click.option("--min-cosine", type=FiniteFloatRange(0, 1), help="Budget for models without classes (embeddings): "
              "cosine of the outputs against FP32, guarded like --max-accuracy-drop. Default 0.99.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Batch sizes to time FP32 against INT8.")
@click.option("--runs", type=click.IntRange(3, MAX_RUNS), default=20, show_default=True,
              help="Timed runs per model and batch size.")
@click.option("--provider", "providers", multiple=True, help="Execution provider(s) to time on (default: the target's, "
              "else cpu).")
@click.option("--threads", type=click.IntRange(1), callback=check_threads_option,
              help="Intra-op threads for timing and the guard's ranking, at most this machine's cores (default: ORT's).")
@click.option("--seq-len", type=click.IntRange(1), default=128, show_default=True, help="Token length of text samples.")
@click.option("--tokenizer", type=click.Path(file_okay=False), help="Tokenizer directory for text data (default: the model's).")
@click.option("--text-field", default="text", show_default=True, metavar="NAME",
              help="The text's column (CSV/TSV) or key (JSON Lines) in a labelled text file.")
@click.option("--label-field", default="label", show_default=True, metavar="NAME",
              help="The label's column or key in a labelled text file (class names or indices).")
@click.option("--image-size", metavar="HxW", help="Resize images to this size (default: the model's input size).")
@click.option("--calib-batch", type=click.IntRange(1), default=8, show_default=True,
              help="Samples per calibration batch (MinMax; histogram methods calibrate one sample at a time).")
@click.option("--mean", help="Per-channel mean for images, e.g. 0.485,0.456,0.406 (default: the model's, else ImageNet).")
@click.option("--std", help="Per-channel std for images (default: the model's, else ImageNet).")
@click.option("--chunk", type=click.IntRange(1), help="Memory-bounded calibration: at most this many intermediate outputs at once.")
@click.option("--no-fusion", is_flag=True, help="Skip ORT's transformer fusions before quantizing.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@json_option
@click.pass_context
def quantize(ctx, model, output, calib, eval_, calib_samples, eval_samples, preset_name, auto, mode, fmt, activations,
             weights, per_channel, reduce_range, calibration, adaround, bias_correction, exclude, max_accuracy_drop,
             min_cosine, batch_sizes, runs, providers,
             threads, seq_len, tokenizer, text_field, label_field, image_size, calib_batch, mean, std, chunk, no_fusion, force,
             as_json) -> None:
    """Quantize an FP32 ONNX MODEL to INT8 with ONNX Runtime, and check that it pays off.

    Static quantization runs ORT's quant_pre_process, then quantize_static with per-channel weights
    (QDQ by default); dynamic quantization stores int8 weights. Transformer models (BERT, ViT, GPT-2)
    get ORT's transformer fusions first. The INT8 model keeps the FP32 model's provenance and
    node-to-module map and adds its own (calibration set hash, method, preset).

    The report compares FP32 and INT8 on this machine: size, latency (interleaved runs, medians),
    fidelity (top-1 agreement, cosine) and accuracy when the data has labels.

    \b
    Examples:
      toolchain quantize mnist.onnx --calib builtin:mnist -o mnist.int8.onnx --max-accuracy-drop 0.3
      toolchain quantize resnet50.onnx --calib ./images --auto -o resnet50.int8.onnx
      toolchain quantize minilm.onnx --mode dynamic --eval builtin:drugreviews -o minilm.int8.onnx
    """
    from toolchain.core.errors import render_all
    from toolchain.quantize import BudgetError, QuantizeJob, run_quantize

    job = QuantizeJob(model=model, output=output, calib_data=calib, eval_data=eval_, calib_samples=calib_samples,
                      eval_samples=eval_samples, target=preset_name, auto=auto, mode=mode, fmt=fmt,
                      activations=activations, weights=weights, per_channel=per_channel, reduce_range=reduce_range,
                      calibration=calibration, adaround=adaround, bias_correction=bias_correction,
                      exclude=tuple(exclude), max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine,
                      batch_sizes=_ints(batch_sizes), runs=runs, providers=tuple(providers), seq_len=seq_len,
                      tokenizer=tokenizer, text_field=text_field, label_field=label_field, image_size=_size(image_size), mean=_floats(mean), std=_floats(std),
                      calib_batch=calib_batch, chunk=chunk, fuse=not no_fusion, force=force, threads=threads)
    try:
        with json_safe_stdout(as_json), status("quantizing and measuring", quiet=is_quiet(ctx, as_json)) as say:
            report = render_all(run_quantize(job, progress=say), cli=True)  # notes name options: spell them as flags
    except BudgetError as exc:  # nothing written: one error line (exit 2); --json still gets the report on stdout
        if as_json:
            emit(render_all(exc.report, cli=True), as_json, lambda console: None)
        raise

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        timing = report["timing"]
        t = Table(title=f"FP32 vs INT8 on {', '.join(report['providers'])} (medians of {runs} interleaved runs, "
                        f"{timing['threads']} threads, spinning off, {timing['cpu']['model']})",
                  title_justify="left")
        batches = report["batches"]
        columns = (["configuration", "size"] + [f"b{b} ms" for b in batches] + [f"b{b} speed" for b in batches]
                   + ["cosine", "agree", "acc", "budget"])
        for col in columns:
            t.add_column(col, justify="left" if col == "configuration" else "right", no_wrap=True)
        for row in report["rows"]:
            fid = row["fidelity"] or {}
            acc = fid.get("accuracy_int8")
            latency = row["latency"] or {}
            t.add_row(escape(row["label"]), fmt_bytes(row["size_bytes"], compact=True) if row["size_bytes"] else "-",
                      *[f"{latency[str(b)]['median_ms']:.2f}" if str(b) in latency else "-" for b in batches],
                      *[f"{row['speedup'][str(b)]:.2f}x" for b in batches],
                      f"{fid['cosine']:.5f}" if fid else "-",
                      f"{fid['agreement']:.1%}" if fid and fid.get("agreement") is not None else "-",
                      f"{acc:.2%}" if acc is not None else "-",
                      "[green]ok[/]" if row["meets_budget"] else "[red]over[/]")
        console.print(t)
        console.print("  b<N> ms: median latency at batch N; speed: FP32 median / this median; agree: top-1 agreement "
                      "with FP32; acc: accuracy on labelled data")
        if len(report.get("guard") or []) > 1:
            console.print(_guard_table(report["guard"], batches))
            console.print("  gain: shortfall before minus after (the measure the budget judges); ms lost: median "
                          "against the model kept so far in the same interleaved runs (est: multiply-accumulate "
                          "share of FP32 minus INT8); before/after: on the evaluation data; kept/undone: "
                          "decided on other data (report's guard_selection), undone when no better there")
        for row in report["rows"]:
            if not row["meets_budget"]:
                console.print(f"  [red]over budget[/] {escape(row['label'])}: {escape(row['reason'])}")
        for note in report["notes"]:
            console.print(f"  {escape(note)}")
        console.print(("[green]✓[/] " if report["output"] else "[yellow]![/] ") + escape(report["recommendation"]))

    emit(report, as_json, render)


def _fidelity_cell(fid: dict | None) -> str:
    if not fid:
        return "-"
    agree = fid.get("agreement")
    return (f"{agree:.1%} " if agree is not None else "") + f"cos {fid['cosine']:.4f}"


def _guard_table(entries: list[dict], batches: list[int]):
    """The accuracy guard's tries: nodes added (with their PyTorch modules), fidelity before and after,
    what it gained, the milliseconds it cost (measured, and estimated) and whether it was kept."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="accuracy guard: what each FP32 fallback bought and cost", title_justify="left")
    for col in ["step", "nodes added (module)", "before", "after", "gain"] + [f"b{b} ms lost (est)" for b in batches] + [
            "kept"]:
        t.add_column(col, justify="left" if col.startswith("nodes") else "right")
    for e in entries[1:]:
        nodes = [f"{n} ({m})" if m else n for n, m in zip(e["added"], e["added_modules"], strict=True)]
        lost = [f"{e['ms_lost'][str(b)]:+.2f} ({e['estimated_ms_lost'][str(b)]:+.2f})"
                if str(b) in e["ms_lost"] else "-" for b in batches]
        t.add_row(str(e["step"]), escape(", ".join(nodes)), _fidelity_cell(e["fidelity_before"]),
                  _fidelity_cell(e["fidelity"]), f"{e['gain']:+.4g}" if e["gain"] is not None else "-", *lost,
                  "[green]kept[/]" if e["kept"] else "[yellow]undone[/]")
    return t
