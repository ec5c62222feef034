"""Output helpers shared by the commands: rich for people (stdout), JSON for machines, status on stderr.

Progress (:func:`status`) is a rich spinner on a terminal and plain timestamped lines on a stderr that is
a file or a pipe (``> log 2>&1``, CI): ``[01:42] pruning: step 3: ...``, the time counted from the
command's start (:func:`progress_mode`; ``TOOLCHAIN_PROGRESS=lines`` or ``off`` forces either). Lines are
rate-limited: within one stage (the text before a line's last ``": "``, digits aside) at most one every
:data:`LINE_INTERVAL_S`, a new stage at once, and the latest line of a block that printed any is printed
when it ends. A block that ends, or fails, within :data:`LINE_GRACE_S` prints none, so quick commands
and one-line errors look as they do on a terminal. While a block runs, what library code logs to the
``toolchain.progress`` logger (:data:`PROGRESS_LOGGER`) shows in the same spinner or lines. Nothing under
``--quiet`` or ``--json``, nor on a stream without a file descriptor (Click's CliRunner, a StringIO).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

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


PROGRESS_LOGGER = "toolchain.progress"
LINE_INTERVAL_S = 2.0  # plain progress lines: at most one per interval within a stage
LINE_GRACE_S = 5.0  # ... and none for a block that is over (or failed) sooner (imports of torch included)


def progress_mode(stream: IO[str] | None = None) -> str:
    """How progress shows on ``stream`` (stderr): ``spinner`` on a terminal, ``lines`` on a file or pipe,
    ``none`` on a stream without a file descriptor (captured output: a test runner's, a StringIO) or a
    closed one. ``TOOLCHAIN_PROGRESS=lines`` / ``off`` in the environment forces ``lines`` / ``none``."""
    forced = os.environ.get("TOOLCHAIN_PROGRESS", "").strip().lower()
    if forced in ("lines", "off"):
        return "lines" if forced == "lines" else "none"
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return "spinner"
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return "none"
    return "lines"


def stamp(seconds: float) -> str:
    """``[mm:ss]``, or ``[h:mm:ss]`` from an hour on."""
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"[{hours}:{minutes:02d}:{secs:02d}]" if hours else f"[{minutes:02d}:{secs:02d}]"


def stage_of(line: str) -> str:
    """What a progress line is about: its text before the last ``": "`` (the whole line without one), with
    numbers ignored, so ``prune: epoch 1/2, step 3/9`` and ``prune: epoch 2/2, step 1/9`` are one stage."""
    head = line.rpartition(": ")[0] or line
    return re.sub(r"\d+", "#", head)


class ProgressLines:
    """Progress as plain timestamped lines on ``stream`` (stderr), rate-limited as the module says; a line
    held back is written by a timer once it is due, so a long step still shows. Call with each line;
    :meth:`close` at the end (``flush=False`` after a failure: the error line stays the only one)."""

    def __init__(self, stream: IO[str] | None = None, *, started: float | None = None, interval: float | None = None,
                 grace: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._opened = clock()
        self._started = self._opened if started is None else started
        self._interval = LINE_INTERVAL_S if interval is None else interval
        self._grace = LINE_GRACE_S if grace is None else grace
        self._lock = threading.Lock()
        self._pending: str | None = None
        self._stage: str | None = None
        self._last = float("-inf")
        self._shown = self._closed = False
        self._timer: threading.Timer | None = None

    def __call__(self, line: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending = line
            self._write_or_wait(self._clock())

    def _due(self, line: str, now: float) -> float:
        if now < self._opened + self._grace:
            return self._opened + self._grace
        return now if stage_of(line) != self._stage else self._last + self._interval

    def _write_or_wait(self, now: float) -> None:
        due = self._due(self._pending, now)
        if due <= now:
            self._write(now)
        elif self._timer is None:
            self._timer = threading.Timer(due - now, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if not self._closed and self._pending is not None:
                self._write_or_wait(self._clock())

    def _write(self, now: float) -> None:
        line, self._pending = self._pending, None
        self._stage, self._last, self._shown = stage_of(line), now, True
        try:
            self._stream.write(f"{stamp(now - self._started)} {line}\n")
            self._stream.flush()
        except (OSError, ValueError):  # the reader left or the stream was closed: progress is not worth an error
            pass

    def close(self, *, flush: bool = True) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if flush and self._shown and self._pending is not None:
                self._write(self._clock())


class _SinkHandler(logging.Handler):
    """Sends ``toolchain.progress`` records to the innermost active progress display."""

    def emit(self, record: logging.LogRecord) -> None:
        if _sinks:
            try:
                _sinks[-1](record.getMessage())
            except Exception:  # noqa: BLE001 - a progress line never breaks the work it reports on
                self.handleError(record)


_sinks: list[Callable[[str], None]] = []
_handler = _SinkHandler(logging.INFO)


@contextmanager
def progress_logged(sink: Callable[[str], None]) -> Iterator[None]:
    """Within the block, lines logged to :data:`PROGRESS_LOGGER` (INFO and up) go to ``sink`` (the innermost
    block's when nested) instead of the root logger's handler."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    if not _sinks:
        saved = (logger.level, logger.propagate)
        logger.addHandler(_handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.propagate = False
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.pop()
        if not _sinks:
            logger.removeHandler(_handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]


def command_started() -> float:
    """When the running command started (``time.monotonic``, recorded by the CLI's root), else now."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().obj if ctx is not None else None
    started = root.get("started") if isinstance(root, dict) else None
    return started if isinstance(started, float) else time.monotonic()


@contextmanager
def status(message: str, *, quiet: bool) -> Iterator[Callable[[str], None]]:
    """Progress on stderr while long work runs, as :func:`progress_mode` says: a spinner, or plain
    timestamped lines (:class:`ProgressLines`); nothing when quiet. Yields a function that shows a progress
    line (``MESSAGE: TEXT``); lines logged to :data:`PROGRESS_LOGGER` meanwhile show the same way."""
    mode = "none" if quiet else progress_mode()
    if mode == "none":
        yield lambda _text: None
        return
    if mode == "lines":
        lines = ProgressLines(started=command_started())
        lines(message)

        def say(text: str) -> None:
            lines(f"{message}: {text}")

        ok = False
        try:
            with progress_logged(say):
                yield say
            ok = True
        finally:
            lines.close(flush=ok)
        return
    with Console(stderr=True).status(message) as spinner:

        def update(text: str) -> None:
            spinner.update(f"{message}: {text}")

        with progress_logged(update):
            yield update


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
