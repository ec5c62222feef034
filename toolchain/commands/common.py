"""Output helpers shared by the commands: rich for people (stdout), JSON for machines, status on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of tables.")


def stdout_console() -> Console:
    """Rich console on stdout; when piped (no terminal width to read), $COLUMNS or 150 instead of rich's 80."""
    import os

    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "150"))
    return Console(highlight=False, width=width)


def emit(data: dict[str, Any], as_json: bool, render: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON, or call ``render`` with a rich console."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(stdout_console())


@contextmanager
def status(message: str, *, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while long work runs (nothing when quiet or stderr is not a terminal); yields a
    function that replaces the spinner's text with a progress line."""
    if quiet or not sys.stderr.isatty():
        yield lambda _text: None
        return
    with Console(stderr=True).status(message) as spinner:
        yield lambda text: spinner.update(f"{message}: {text}")


@contextmanager
def json_safe_stdout(as_json: bool) -> Iterator[None]:
    """With --json, whatever library or user code prints goes to stderr, so stdout stays one JSON document."""
    if not as_json:
        yield
        return
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        yield


def is_quiet(ctx: click.Context, as_json: bool = False) -> bool:
    root = ctx.find_root().obj or {}
    return bool(root.get("quiet")) or as_json


def fmt_bytes(n: int, compact: bool = False) -> str:
    """1.5 MiB (or 1.5M with ``compact``)."""
    sep = "" if compact else " "
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            text = f"{n:.1f}{sep}{unit}" if unit != "B" else f"{n}{sep}B"
            return text.replace("iB", "") if compact else text
        n /= 1024
    return f"{n:.1f}{sep}GiB"


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan (which compares false with both bounds and so passes FloatRange)."""

    name = "float range"

    def convert(self, value, param, ctx):
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv
