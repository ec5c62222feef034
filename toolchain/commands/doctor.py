"""toolchain doctor"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, json_option


@click.command()
@json_option
def doctor(as_json: bool) -> None:
    """Check what this machine can run and measure.

    Reports package versions, which onnxruntime build is installed (onnxruntime, onnxruntime-gpu or
    onnxruntime-openvino; for OpenVINO, its version and devices), the CPU's INT8-relevant features
    (AVX2, AVX512-VNNI, AMX), which ONNX Runtime execution providers actually run a session (onnxruntime-gpu lists CUDA and TensorRT even
    without a GPU, then silently falls back to CPU), and which power meters are readable, with the fix
    for each one that is not.
    """
    from toolchain.report.doctor import run_doctor

    report = run_doctor()

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        from toolchain.core.host import ORT_DISTRIBUTIONS

        build = report.onnxruntime_build
        t = Table(title="Versions", show_header=False, title_justify="left")
        for name, version in report.versions.items():
            if name in ORT_DISTRIBUTIONS and not version and build.get("distribution"):
                continue  # another build provides the onnxruntime module
            t.add_row(name, version or "[dim]not installed[/]")
        console.print(t)
        if build.get("distribution"):
            console.print(f"[bold]ONNX Runtime build[/] {build['distribution']} {build['version']}")
        ov = build.get("openvino")
        if ov:
            props = ov.get("device_properties", {})
            devices = "; ".join(
                f"{d}: {props.get(d, {}).get('full_device_name', '?')}"
                + (f" ({props[d]['optimization_capabilities']})" if props.get(d, {}).get("optimization_capabilities") else "")
                for d in ov.get("devices", []))
            console.print(f"[bold]OpenVINO[/] {ov.get('version', '')} devices {escape(devices or 'none')}"
                          + (f" [dim]({escape(ov['error'])})[/]" if ov.get("error") else ""))
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
