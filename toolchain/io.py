"""File helpers: hashing, refusing to clobber, and atomic writes of ONNX models (with external data)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolchain.errors import ToolchainError


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output(output: str | os.PathLike, *, force: bool, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse to overwrite an input, or an existing output without ``force``; return the resolved path."""
    out = Path(output).expanduser().resolve()
    for inp in inputs:
        if inp and Path(inp).expanduser().resolve() == out:
            raise ToolchainError(f"{output}: refusing to overwrite the input; choose another -o")
    if out.exists() and not force:
        raise ToolchainError(f"{output} already exists", hint="pass --force to overwrite it")
    if out.is_dir():
        raise ToolchainError(f"{output} is a directory; -o takes a file path")
    if not out.parent.exists():
        raise ToolchainError(f"{out.parent}: output directory does not exist")
    return out


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A scratch directory beside ``final``; the caller writes there and calls :func:`commit_files`.
    The directory is removed however the block exits, so an interruption leaves nothing half-written."""
    scratch = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def commit_files(scratch: Path, final: Path) -> list[Path]:
    """Move every file from ``scratch`` next to ``final`` with ``os.replace`` (atomic on one filesystem),
    the file named like ``final`` last, so a reader never sees a model whose external data is missing."""
    moved = []
    files = sorted(scratch.iterdir(), key=lambda p: p.name == final.name)
    for f in files:
        dest = final if f.name == final.name else final.parent / f.name
        os.replace(f, dest)
        moved.append(dest)
    return moved
