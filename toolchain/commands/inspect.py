"""toolchain inspect"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, json_option


@click.command(name="inspect")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--resolve", "names", multiple=True, metavar="NODE",
              help="Resolve a node name as ONNX Runtime's profiler reports it (NAME or NAME@OP, OP being the "
                   "profiled op_name) to its PyTorch module; repeatable.")
@click.option("--nodes", "show_nodes", is_flag=True, help="List every node with its module.")
@json_option
def inspect_(onnx_file, names, show_nodes, as_json) -> None:
    """Show an ONNX model's provenance, inputs, outputs and node-to-module map.

    \b
    Examples:
      toolchain inspect resnet50.onnx
      toolchain inspect resnet50.onnx --resolve relu_3_nchwc@Conv --resolve ReorderOutput
    """
    from toolchain.export.describe import inspect_model

    info = inspect_model(onnx_file, list(names), include_nodes=show_nodes)

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        console.print(f"[bold]{escape(onnx_file)}[/]: {info['nodes']} nodes, opset {info['opset']}, "
                      f"{info['mapped_nodes']} mapped to {info['modules']} modules")
        t = Table(title="Provenance", show_header=False, title_justify="left")
        for key, value in info["provenance"].items():
            t.add_row(escape(key), escape(str(value)))
        console.print(t)
        for kind in ("inputs", "outputs"):
            console.print(f"{kind}: " + escape(", ".join(f"{i['name']} {i['shape']} {i['dtype']}" for i in info[kind])))
        if info.get("resolved"):
            t = Table(title="Resolved names", title_justify="left")
            for col in ("node", "op", "module", "how"):
                t.add_column(col)
            for r in info["resolved"]:
                module = "[red]unresolved[/]" if r["module"] is None else escape(r["module"] or "(the model itself)")
                t.add_row(escape(r["name"]), escape(r["op"] or ""), module, r["method"] or "")
            console.print(t)
        if show_nodes:
            t = Table(title="Nodes", title_justify="left")
            for col in ("node", "op", "module"):
                t.add_column(col)
            for n in info["node_modules"]:
                t.add_row(escape(n["name"]), n["op"], escape(n["module"]) if n["module"] is not None else "[dim]-[/]")
            console.print(t)

    emit(info, as_json, render)
