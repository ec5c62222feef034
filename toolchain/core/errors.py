"""Typed errors. Every error a user can cause is a :class:`ToolchainError` whose message is one line
that says what went wrong and, where there is one, how to fix it. The CLI prints it without a traceback.

Library code names a caller's option with :func:`option` (``option("--force", "force=True")``), so one
message serves both front ends: ``str(error)`` speaks of the Python API and names the flag after it
(``pass force=True [--force] to overwrite it``), :meth:`ToolchainError.cli_text` of the command line
(``pass --force to overwrite it``)."""

import re

_OPTION = re.compile("\x1f([^\x1e\x1f]*)\x1e([^\x1e\x1f]*)\x1f")


def option(cli: str, api: str) -> str:
    """An option named inside an error message: ``cli`` as the command line spells it (``--force``),
    ``api`` as the Python API does (``force=True``). Rendered by :func:`render`."""
    return f"\x1f{cli}\x1e{api}\x1f"


def render(text: str, *, cli: bool) -> str:
    """``text`` with every :func:`option` spelled for the command line (``cli=True``) or the Python API."""
    return _OPTION.sub(lambda m: m.group(1) if cli else f"{m.group(2)} [{m.group(1)}]", text)


def render_all(obj, *, cli: bool):
    """``obj`` (a JSON-like value: dicts, lists, strings) with :func:`render` applied to every string, for
    library results that carry option names (notes, verdicts)."""
    if isinstance(obj, str):
        return render(obj, cli=cli)
    if isinstance(obj, dict):
        return {k: render_all(v, cli=cli) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(render_all(v, cli=cli) for v in obj)
    return obj


class ToolchainError(Exception):
    """A problem with the user's input or environment, reported as one clear line (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def _text(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __str__(self) -> str:
        return render(self._text(), cli=False)

    def cli_text(self) -> str:
        """The message as the command line shows it: options spelled as flags."""
        return render(self._text(), cli=True)


class ParityError(ToolchainError):
    """The exported ONNX model does not reproduce the PyTorch outputs within tolerance (exit code 3)."""

    exit_code = 3


class MeterUnavailableError(ToolchainError):
    """A power meter cannot be read here; the message says why and how to fix it."""


def one_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` (at most 300 characters), for wrapping foreign errors."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
