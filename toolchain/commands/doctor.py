"""toolchain doctor"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, json_option


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check what this machine can run and measure.

    Reports package versions, the CPU's INT8-relevant features (AVX2, AVX512-VNNI, AMX), which ONNX
    Runtime execution providers actually run a session (onnxruntime-gpu lists CUDA and TensorRT even
    without a GPU, then silently falls back to CPU), and which power meters are readable, with the fix
    for each one that is not.
    """
    from toolchain.report.doctor import run_doctor

    report = run_doctor()

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        t = Table(title="Versions", show_header=False, title_justify="left")
        for name, version in report.versions.items():
            t.add_row(name, version or "[dim]not installed[/]")
        console.print(t)
        cpu = report.cpu
        feats = ", ".join(f"[green]{k}[/]" if v else f"[dim]no {k}[/]" for k, v in cpu.features.items()
                          if v or k in ("AVX2", "AVX512-VNNI", "AMX"))
        console.print(f"[bold]CPU[/] {cpu.model} ({cpu.cores} logical cores, {cpu.machine}): {feats}")
        t = Table(title="Execution providers", title_justify="left")
        t.add_column("provider")
        t.add_column("usable")
        t.add_column("why not")
        for p in report.providers:
            t.add_row(p["name"], "[green]yes[/]" if p["usable"] else "[red]no[/]", escape(p["reason"]))
        console.print(t)
        t = Table(title="Power meters", title_justify="left")
        t.add_column("meter")
        t.add_column("readable")
        t.add_column("detail")
        t.add_column("fix")
        for m in report.meters:
            t.add_row(m["name"], "[green]yes[/]" if m["readable"] else "[red]no[/]", escape(m["detail"]), escape(m["fix"]))
        console.print(t)
        for problem in report.problems:
            console.print(f"[yellow]![/] {escape(problem)}")

    emit(report.to_dict(), as_json, render)
