"""toolchain targets"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, json_option


@click.command()
@click.argument("specs", nargs=-1, metavar="[TARGET_OR_TOML]...")
@json_option
def targets(specs: tuple[str, ...], as_json: bool) -> None:
    """List deployment targets and whether each is usable on this machine.

    A target is a TOML file describing a device: the ONNX Runtime execution providers to run on (in
    priority order, with their provider options), the power meter(s) that measure energy there, the
    grid's carbon intensity (gCO2e/kWh), the INT8 quantization preset and the channel multiple pruning
    rounds to. `profile` and `compare` measure models on targets.

    With no argument, lists the built-in targets (x86-cpu, x86-vnni, arm64-cpu, cuda, tensorrt,
    openvino-cpu, jetson-orin). Give names or paths to .toml files to check those instead; an argument
    is a path when it ends in .toml or contains a /.

    A target is usable when this machine has the architecture and CPU flags it requires and every one of
    its execution providers really runs a session here (an onnxruntime build without the provider, or one
    that falls back to CPU, does not count); otherwise the reason says how to fix it. Meters are reported
    but not required here: `profile` and `compare` stop with the fix when no meter of the target can be
    read, unless --meter estimate asks for a labelled estimate (see `toolchain doctor`).

    \b
    Write your own: copy a file from targets/ (targets/README.md lists every key).
    For example, my-xeon.toml:
      name = "my-xeon"
      description = "Xeon in the lab, 8 threads"
      quantization_preset = "x86-vnni"
      round_to = 8
      [requires]
      arch = "x86_64"
      cpu_flags = ["avx512_vnni"]
      [session]
      intra_op_threads = 8
      [[providers]]
      name = "cpu"
      [meter]
      names = ["rapl"]
      [carbon]
      intensity_g_per_kwh = 380
      source = "my utility's 2024 disclosure"

    \b
    Examples:
      toolchain targets                      the built-in targets, usable here or not
      toolchain targets tensorrt --json      one target as JSON (its providers' options too)
      toolchain targets ./my-xeon.toml       check your own file
    """
    from dataclasses import asdict

    from toolchain.targets.host import meter_statuses, usable
    from toolchain.targets.target import builtin_targets, load_target

    loaded = [load_target(s) for s in specs] if specs else builtin_targets()
    rows = []
    for target in loaded:
        ok, reason = usable(target)
        entry = target.to_dict()
        entry["usable"] = ok
        entry["reason"] = reason
        entry["meter_status"] = [asdict(m) for m in meter_statuses(target)]
        rows.append(entry)

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        t = Table(title="Deployment targets", title_justify="left")
        t.add_column("target", no_wrap=True)
        t.add_column("providers")
        t.add_column("meters")
        t.add_column("gCO2e/kWh", justify="right")
        t.add_column("preset", no_wrap=True)
        t.add_column("usable here")
        for row in rows:
            providers = " > ".join(short_label(p["name"]) for p in row["providers"])
            meters = ", ".join(f"[green]{m['name']}[/]" if m["readable"] else f"[red]{m['name']} (unreadable)[/]"
                               for m in row["meter_status"])
            verdict = "[green]yes[/]" if row["usable"] else f"[red]no[/]: {escape(row['reason'])}"
            t.add_row(escape(row["name"]), escape(providers), meters, f"{row['carbon']['intensity_g_per_kwh']:g}",
                      escape(row["quantization_preset"]), verdict)
        console.print(t)
        console.print("  providers in priority order; with no readable meter, profile/compare stop with the fix "
                      "(`toolchain doctor`) unless --meter estimate asks for a labelled estimate")

    emit({"targets": rows}, as_json, render)


def short_label(provider: str) -> str:
    """``TensorrtExecutionProvider`` -> ``TensorRT``."""
    name = provider.removesuffix("ExecutionProvider")
    return {"Tensorrt": "TensorRT", "Dml": "DirectML"}.get(name, name)
