"""toolchain models"""

from __future__ import annotations

import click

from toolchain.commands.common import emit, json_option


@click.command()
@json_option
def models(as_json: bool) -> None:
    """List the built-in model catalogue.

    Pretrained models ship inside Python packages (no download); the other entries are architectures
    built from transformers configs with random weights: fine for timing and energy profiling, useless
    for accuracy. Any of these names works where a MODEL is asked for, as do a transformers model
    directory, `package.module:factory` and `file.py:factory`.
    """
    from toolchain.model.catalogue import catalogue

    entries = [{"name": e.name, "kind": e.kind, "modality": e.modality, "description": e.description}
               for e in catalogue()]

    def render(console) -> None:
        from rich.table import Table

        t = Table(title="Built-in models", title_justify="left")
        for col in ("name", "weights", "modality", "description"):
            t.add_column(col)
        for e in entries:
            weights = "[green]pretrained[/]" if e["kind"] == "pretrained" else "[yellow]random[/]"
            t.add_row(e["name"], weights, e["modality"], e["description"])
        console.print(t)

    emit({"models": entries}, as_json, render)
