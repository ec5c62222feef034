"""Typed errors. Every error a user can cause is a :class:`ToolchainError` whose message is one line
that says what went wrong and, where there is one, how to fix it. The CLI prints it without a traceback."""


class ToolchainError(Exception):
    """A problem with the user's input or environment, reported as one clear line (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ParityError(ToolchainError):
    """The exported ONNX model does not reproduce the PyTorch outputs within tolerance (exit code 3)."""

    exit_code = 3


class MeterUnavailableError(ToolchainError):
    """A power meter cannot be read here; the message says why and how to fix it."""


def one_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` (at most 300 characters), for wrapping foreign errors."""
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
