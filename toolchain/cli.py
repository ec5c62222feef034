"""The ``toolchain`` command line: a Click group whose subcommands are imported only when used.

``toolchain --help`` and ``toolchain COMMAND --help`` import neither torch, onnxruntime nor transformers:
each command module imports its library code inside the command body.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys
import time

import click

from toolchain import __version__
from toolchain.core.errors import ToolchainError

# name -> (module, attribute, one-line summary shown by `toolchain --help` without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "doctor": ("toolchain.commands.doctor", "doctor", "Check versions, CPU features, execution providers and power meters."),
    "models": ("toolchain.commands.models", "models", "List the built-in model catalogue."),
    "export": ("toolchain.commands.export", "export", "Export a PyTorch model to ONNX, checked against PyTorch."),
    "inspect": ("toolchain.commands.inspect", "inspect_", "Show an ONNX model's provenance, inputs and node-to-module map."),
    "quantize": ("toolchain.commands.quantize", "quantize", "INT8-quantize an ONNX model and check that it pays off on the target."),
    "targets": ("toolchain.commands.targets", "targets", "List deployment targets and whether each is usable on this machine."),
    "profile": ("toolchain.commands.profile", "profile", "Measure latency and energy of an ONNX model on a target, per layer."),
    "compare": ("toolchain.commands.compare", "compare", "Compare models (FP32 vs INT8) across targets: latency, energy, carbon."),
    "distill": ("toolchain.commands.distill", "distill", "Distill a student from a teacher (KD loss, or label-free on outputs/embeddings)."),
    "prune": ("toolchain.commands.prune", "prune", "Prune a PyTorch model structurally, energy-costliest layers first."),
    "worker": ("toolchain.commands.worker", "worker", "Start a Ray node that offers targets to profile/compare --cluster."),
    "pipeline": ("toolchain.commands.pipeline", "pipeline", "Prune, distill, export, quantize, profile and report in one resumable run."),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:  # the root's own options: `toolchain --bogus`
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ToolchainError as exc:
            _fail(exc.cli_text(), exc.exit_code, ctx)
        except KeyboardInterrupt:
            _fail("interrupted", 130, ctx)
        except BrokenPipeError:  # `toolchain ... | head`: the reader left; nothing to report
            import os

            sys.stderr.close()
            os._exit(141)
        except click.UsageError as exc:  # a subcommand's options or arguments, or a command's BadParameter
            _usage_error(exc)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code, ctx)
        except Exception as exc:  # an unexpected failure: still one line unless -v asks for the traceback
            disk = disk_error_message(exc)
            if disk:
                _fail(disk, 2, ctx)
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", 1, ctx)


# errno values that mean the file system, not the tool, refused a write; reported as one-line user errors
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def disk_error_message(exc: BaseException) -> str | None:
    """The one-line message for a full disk, an exceeded quota, a read-only file system or a denied
    permission anywhere in ``exc``'s chain of causes (libraries wrap OSErrors), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            where = f" writing {exc.filename}" if exc.filename else ""
            if exc.errno in _DISK_FULL:
                what = "disk quota exceeded" if exc.errno == getattr(errno, "EDQUOT", None) else "no space left on device"
                return f"{what}{where} (free some space, or write elsewhere)"
            if exc.errno == errno.EROFS:
                return f"read-only file system{where}"
            if exc.errno in _NOT_WRITABLE and exc.filename:  # reading or writing: name the file, not the act
                return f"{_NOT_WRITABLE[exc.errno]}: {exc.filename}"
        exc = exc.__cause__ or exc.__context__
    return None


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # Click >= 8.2


def _usage_error(exc: click.UsageError) -> None:
    """Click's usage errors as the one `error:` line the README promises (Click prints three), exit 2.
    Running a group with no command still prints its help."""
    if isinstance(exc, _NO_ARGS_IS_HELP):
        raise exc
    message = " ".join(exc.format_message().split()).rstrip(".")
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]
    path = exc.ctx.command_path if exc.ctx else "toolchain"
    click.echo(f"error: {message or 'bad usage'} (see '{path} --help')", err=True)
    raise click.exceptions.Exit(exc.exit_code if exc.exit_code else 2)


def _fail(message: str, code: int, ctx: click.Context) -> None:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    click.echo(f"error: {first_line}", err=True)
    ctx.exit(code)


def _terminate_like_interrupt() -> None:
    """SIGTERM (a killed job, a CI timeout) unwinds like Ctrl-C, so scratch files are cleaned up."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. the CLI driven from a test runner's worker)
        pass


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toolchain")
@click.option("-v", "--verbose", count=True, help="More detail on stderr; -v also shows tracebacks of internal errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; results still go to stdout.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Make a PyTorch model run cheaper on a given device.

    Export it to ONNX with a map from every ONNX node back to its PyTorch module, quantize it,
    and profile per-layer latency and energy on ONNX Runtime execution providers.

    \b
    Start with:
      toolchain doctor                       what this machine can run and measure
      toolchain models                       built-in models (pretrained and random-weight layouts)
      toolchain export minilm -o m.onnx      export and check against PyTorch
    """
    ctx.ensure_object(dict)
    ctx.obj["started"] = time.monotonic()  # progress lines off a terminal are stamped from here
    _terminate_like_interrupt()
    ctx.obj["verbose"] = verbose
    ctx.obj["quiet"] = quiet
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    main()
