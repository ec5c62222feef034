"""toolchain export"""

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
from toolchain.model.spec import TASKS


@click.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
@click.option("--task", type=click.Choice(TASKS), default="auto", show_default=True,
              help="Head for a transformers directory (auto: from config.architectures).")
@click.option("--weights", type=click.Path(dir_okay=False), help="A state_dict for module:factory, loaded with weights_only=True.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]DIMS[:DTYPE[:HIGH]]",
              help="Example input, e.g. 1x3x224x224, or ids:1x128:int64:30522 (ints drawn below 30522). Required for module:factory; repeat per input.")
@click.option("--allow-pickle", is_flag=True, help="Allow unpickling a whole model, or a --weights file that is not a "
              "plain state_dict (runs code from the file: trusted files only).")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]), default="auto", show_default=True,
              help="auto: torchscript with eager attention for BERT-family transformers (the only graph ORT's "
                   "optimizer fuses into Attention, and QAttention after INT8), dynamo for everything else; "
                   "dynamo: torch.export, cleaner graphs; torchscript: tracing, deprecated by PyTorch.")
@click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True, help="ONNX opset.")
@click.option("--seq-len", type=click.IntRange(1), default=32, show_default=True, help="Sequence length of text inputs in the parity check.")
@click.option("--min-cosine", type=FiniteFloatRange(0, 1), default=0.9999, show_default=True,
              help="Parity fails below this cosine similarity between PyTorch and ONNX Runtime outputs.")
@click.option("--no-parity", is_flag=True, help="Skip the PyTorch vs ONNX Runtime comparison.")
@click.option("--external-data/--no-external-data", default=None,
              help="Weights in a separate .data file (default: only when they exceed 2 GB).")
@click.option("--keep-exporter-metadata", is_flag=True,
              help="Keep the dynamo exporter's per-node stack traces and FX nodes (large; they show local paths).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing output.")
@json_option
@click.pass_context
def export(ctx, model, output, task, weights, input_shapes, allow_pickle, exporter, opset, seq_len, min_cosine,
           no_parity, external_data, keep_exporter_metadata, force, as_json) -> None:
    """Export MODEL to ONNX and check it against PyTorch.

    MODEL is a catalogue name (see `toolchain models`), a transformers model directory, a
    `package.module:factory` or `file.py:factory` returning an nn.Module, or a pickled model
    (with --allow-pickle). The batch axis (and the sequence axis of text inputs) stays dynamic.

    The file is checked with onnx.checker, shape-inferred, compared with PyTorch on ONNX Runtime at
    batch 1 and 4 (max abs error and cosine), and carries provenance and a node-to-module map in its
    metadata. It is written atomically: on any failure nothing is left at OUTPUT.

    \b
    Examples:
      toolchain export minilm -o minilm.onnx
      toolchain export resnet-50 -o resnet50.onnx --exporter torchscript
      toolchain export ./my_model_dir --task sequence-classification -o clf.onnx
      toolchain export mypkg.nets:make_net --weights net.pt --input-shape 1x3x32x32 -o net.onnx
    """
    from toolchain.core.fsio import check_output
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model

    quiet = is_quiet(ctx, as_json)
    check_output(output, force=force)  # fail fast, before the model loads (export_model checks inputs too)
    with json_safe_stdout(as_json):
        with status(f"loading {model}", quiet=quiet):
            loaded = load_model(model, task=task, weights=weights, input_shapes=list(input_shapes),
                                allow_pickle=allow_pickle)
        options = ExportOptions(exporter=exporter, opset=opset, parity=not no_parity, parity_seq_len=seq_len,
                                min_cosine=min_cosine, force=force, external_data=external_data,
                                keep_exporter_metadata=keep_exporter_metadata)
        how = "the exporter that fuses for this model" if exporter == "auto" else f"the {exporter} exporter"
        with status(f"exporting with {how} and checking parity", quiet=quiet):
            result = export_model(loaded, output, options)

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        label = {"pretrained": "pretrained", "random-weights": "[yellow]random weights[/]", "user": "user model",
                 "partly-random": "[yellow]pretrained, with randomly initialised tensors[/]"}
        console.print(f"[green]✓[/] wrote [bold]{escape(result.path)}[/] ({fmt_bytes(result.size_bytes)}, "
                      f"{result.nodes} nodes, opset {result.opset}, {result.exporter} exporter, {result.seconds:.1f} s)")
        console.print(f"  source {escape(result.source)} ({label.get(result.kind, result.kind)}); "
                      f"{result.mapped_nodes}/{result.nodes} nodes mapped to PyTorch modules")
        ins = ", ".join(f"{i['name']} {i['shape']} {i['dtype']} (dynamic: {', '.join(i['dynamic_axes'].values())})"
                        for i in result.inputs)
        console.print(f"  inputs: {escape(ins)}; outputs: {escape(', '.join(result.outputs))}")
        if result.external_data:
            console.print(f"  external data: {', '.join(result.external_data)}")
        if result.parity:
            t = Table(title="Parity: PyTorch vs ONNX Runtime (CPU)", title_justify="left")
            for col in ("batch", "seq len", "max abs error", "cosine", "result"):
                t.add_column(col, justify="right")
            for p in result.parity:
                t.add_row(str(p.batch), str(p.seq_len or "-"), f"{p.max_abs_error:.2e}", f"{p.cosine:.7f}",
                          "[green]pass[/]" if p.passed else "[red]fail[/]")
            console.print(t)

    emit(result.to_dict(), as_json, render)
