"""File helpers: hashing, refusing to clobber, and atomic writes.

Every write the tool makes goes through ONE primitive, :func:`publish`: the content is written to a
scratch path in the destination's own directory (same filesystem), flushed to disk (``fsync``), then
renamed onto the destination. A reader sees the old content or the new, never half of it, and a kill
leaves only a scratch name (``.NAME.toolchain-tmp-PID``, or ``.NAME.toolchain-old-PID`` for a directory
being replaced) that the next run removes (:func:`remove_stale`). Only names of exactly that form, whose
process is gone, are ever removed: a user's own ``.something.tmp-123`` is never touched.
:func:`atomic_write` (one file), :func:`commit_files` (an ONNX model and its external data),
:func:`write_files` (several files into a directory) and the pipeline's stage directories are built on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, option

log = logging.getLogger(__name__)


SCRATCH_TMP = "toolchain-tmp"  # a file or directory being written
SCRATCH_OLD = "toolchain-old"  # a directory being replaced, renamed aside
_SCRATCH = re.compile(r"^\.(?P<name>.+)\.(?:toolchain-tmp|toolchain-old)-(?P<pid>[0-9]+)$")


def scratch_path(final: Path, kind: str = SCRATCH_TMP, pid: int | None = None) -> Path:
    """The scratch name of ``final`` in its own directory: ``.NAME.toolchain-tmp-PID`` (``kind``
    :data:`SCRATCH_TMP`) or ``.NAME.toolchain-old-PID`` (:data:`SCRATCH_OLD`), PID this process's."""
    return final.with_name(f".{final.name}.{kind}-{os.getpid() if pid is None else pid}")


def scratch_pid(name: str) -> int | None:
    """The PID of a scratch name made by :func:`scratch_path`; None for any other name."""
    m = _SCRATCH.match(name)
    return int(m.group("pid")) if m else None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output(output: str | os.PathLike, *, force: bool, inputs: tuple[str | os.PathLike, ...] = (),
                 suffix: str | None = ".onnx") -> Path:
    """Refuse to overwrite an input (even with ``force``: a directory input protects every file in it,
    and ONNX outputs also protect their ``.data`` sibling), or an existing output without ``force``;
    return the resolved path."""
    out = Path(output).expanduser().resolve()
    if suffix and out.suffix != suffix:
        raise ToolchainError(f"{output}: the output must end in {suffix}")
    targets = [out] + ([out.with_name(out.name + ".data")] if suffix == ".onnx" else [])
    for inp in inputs:
        if not inp:
            continue
        src = Path(inp).expanduser().resolve()
        if any(t == src or (src.is_dir() and src in t.parents) for t in targets):
            raise ToolchainError(f"{output}: refusing to overwrite an input ({inp}); choose another {option('-o', 'output')}")
    for target in targets:
        if target.exists() and not force:
            raise ToolchainError(f"{target} already exists", hint=f"pass {option('--force', 'force=True')} to overwrite it")
    if out.is_dir():
        raise ToolchainError(f"{output} is a directory; {option('-o', 'output')} takes a file path")
    if not out.parent.is_dir():
        raise ToolchainError(f"{out.parent}: output directory does not exist")
    if not os.access(out.parent, os.W_OK):
        raise ToolchainError(f"{out.parent}: output directory is not writable")
    return out


def _fsync_tree(path: Path) -> None:
    """Flush ``path`` (a file, or every file under a directory) and its directory entries to disk."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        dirs = [path, *[d for d in path.rglob("*") if d.is_dir()]]
    else:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        dirs = []
    for d in dirs:
        _fsync_dir(d)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported here (some filesystems): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(scratch: Path, final: Path) -> None:
    """Make the complete ``scratch`` (a file or a directory written in ``final``'s directory) appear at
    ``final`` atomically: fsync its content, then rename it over ``final``. An existing directory at
    ``final`` is renamed aside first and removed once the new one is in place."""
    _fsync_tree(scratch)
    if scratch.is_dir() and final.is_dir():
        old = scratch_path(final, SCRATCH_OLD)
        if old.exists():  # left by an earlier process of the same PID
            shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(scratch, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(scratch, final)
    _fsync_dir(final.parent)


def new_scratch_dir(final: Path) -> Path:
    """A fresh, empty scratch directory beside ``final`` (:func:`scratch_path`, same filesystem, so
    :func:`publish` can rename it onto ``final``); one clear error when the directory is not writable."""
    scratch = scratch_path(final)
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        scratch.mkdir()
    except OSError as exc:
        raise ToolchainError(f"{final.parent}: cannot write there ({exc.strerror})") from None
    return scratch


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A scratch directory beside ``final``; the caller writes there and calls :func:`commit_files`.
    The directory is removed however the block exits, so an interruption leaves nothing half-written."""
    remove_stale(final.parent, f".{final.name}.{SCRATCH_TMP}-*")
    scratch = new_scratch_dir(final)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pid_alive(pid: int | str) -> bool:
    """Whether process ``pid`` (a number, or the digits of a scratch file's suffix) still runs."""
    if isinstance(pid, str) and not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: Path, pattern: str) -> None:
    """Remove what a killed run left behind in ``directory``: the entries matching the glob ``pattern``
    that are scratch names of ours (:func:`scratch_path`: ``.NAME.toolchain-tmp-PID`` or
    ``.NAME.toolchain-old-PID``) whose process is gone. Any other name is never removed, whatever
    ``pattern`` says."""
    for stale in directory.glob(pattern):
        pid = scratch_pid(stale.name)
        if pid is None or pid_alive(pid):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` to a scratch file beside ``path``, then :func:`publish` it."""
    tmp = scratch_path(path)
    try:
        with open(tmp, mode) as f:
            write(f)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str) + "\n"), "w")


def commit_files(scratch: Path, final: Path) -> list[Path]:
    """Move every file from ``scratch`` next to ``final`` with :func:`publish`,
    the file named like ``final`` last, so a reader never sees a model whose external data is missing."""
    moved = []
    files = sorted(scratch.iterdir(), key=lambda p: p.name == final.name)
    for f in files:
        dest = final if f.name == final.name else final.parent / f.name
        publish(f, dest)
        moved.append(dest)
    return moved


@contextlib.contextmanager
def captured_output():
    """Silence stdout and stderr at the file-descriptor level (the TorchScript exporter prints IR dumps
    from C++, ORT's calibrators print progress); what was printed is logged at debug level (`-vv`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
                yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            printed = sink.read().decode(errors="replace") + out.getvalue() + err.getvalue()
            if printed.strip():
                log.debug("exporter output:\n%s", printed)


def write_files(files: dict[str, bytes | str], out_dir: str | Path, force: bool, inputs: tuple = ()) -> list[Path]:
    """Write ``files`` (name -> content) into ``out_dir`` atomically: each file is written in a scratch
    directory beside it and moved into place; an existing file is replaced only with ``force``."""
    final = Path(out_dir).expanduser().resolve()
    for inp in inputs:
        src = Path(inp).expanduser().resolve()
        if src == final or any(src == final / n for n in files):
            raise ToolchainError(f"{out_dir}: refusing to overwrite an input ({inp}); choose another {option('-o', 'out_dir')}")
    if final.exists() and not final.is_dir():
        raise ToolchainError(f"{out_dir} exists and is not a directory")
    clash = [n for n in files if (final / n).exists()]
    if clash and not force:
        raise ToolchainError(f"{final / clash[0]} already exists", hint=f"pass {option('--force', 'force=True')} to overwrite, or choose another {option('-o', 'out_dir')}")
    if not final.parent.is_dir():
        raise ToolchainError(f"{final.parent}: output directory does not exist")
    with atomic_dir(final) as scratch:
        for name, content in files.items():
            path = scratch / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        final.mkdir(exist_ok=True)
        written = []
        for name in files:
            publish(scratch / name, final / name)
            written.append(final / name)
    return written


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()
