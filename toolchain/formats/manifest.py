"""``RUN_DIR/manifest.json``: the on-disk contract of a pipeline run directory (pure JSON).

One JSON object, written with ``indent=2`` (:func:`toolchain.core.fsio.write_json`), keys in this order::

    format          "toolchain.pipeline-run"
    format_version  1
    inputs          {model, model_hash, task, data, data_sha256, target}: what the run compresses
    recipe          every field of toolchain.pipeline.Recipe
    versions        tool and library versions
    stages          {stage name: entry}, in the order the stages were first written

A stage entry is ``{status, key, config}`` while it runs (``status`` "running", then "failed" or
"interrupted" if it stops), and ``{status, key, config, outputs, metrics, seconds, finished, reused}`` once
it is done; a done stage whose inputs changed is marked "stale". ``key`` is a hash of the stage's
``config`` (the recipe fields it reads) and of the earlier stages' keys and outputs; ``outputs`` maps each
file the stage wrote (a path relative to the run directory) to its sha256.

A manifest of another ``format`` or ``format_version`` is not read (:meth:`Manifest.read` gives None): the
run starts afresh.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from toolchain.core.fsio import sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT = "toolchain.pipeline-run"
FORMAT_VERSION = 1

Status = Literal["running", "done", "failed", "interrupted", "stale"]


@dataclass(frozen=True)
class Inputs:
    """What the run compresses: the model source and its hash, the data and its hash, the target."""

    model: str
    model_hash: str | None
    task: str | None
    data: str
    data_sha256: str | None  # None where the data is not a file (a builtin: source)
    target: dict[str, Any]  # the target's own dictionary (toolchain.targets)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the contract's order."""
        return {"model": self.model, "model_hash": self.model_hash, "task": self.task, "data": self.data,
                "data_sha256": self.data_sha256, "target": self.target}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inputs:
        """Read the JSON object written by :meth:`to_dict`."""
        return cls(d["model"], d.get("model_hash"), d.get("task"), d["data"], d.get("data_sha256"),
                   dict(d.get("target") or {}))


@dataclass(frozen=True)
class StageEntry:
    """One stage's record. The fields after ``config`` are set once the stage is done (None: absent)."""

    status: Status
    key: str
    config: dict[str, Any]
    outputs: dict[str, str] | None = None  # path relative to the run directory -> sha256
    metrics: dict[str, Any] | None = None  # what the stage reports (its own keys)
    seconds: float | None = None
    finished: str | None = None  # local time, %Y-%m-%dT%H:%M:%S%z
    reused: bool | None = None  # done in an earlier call and kept by this one

    @classmethod
    def running(cls, key: str, config: dict[str, Any]) -> StageEntry:
        """The entry of a stage that has started."""
        return cls("running", key, config)

    @property
    def is_done(self) -> bool:
        return self.status == "done"

    def with_status(self, status: Status) -> StageEntry:
        """This entry with another status (the rest kept)."""
        return replace(self, status=status)

    def outputs_intact(self, root: Path) -> bool:
        """Whether every output file is in ``root`` with the recorded sha256 (False without outputs)."""
        files = self.outputs or {}
        return bool(files) and all((root / name).is_file() and sha256_file(root / name) == digest
                                   for name, digest in files.items())

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: status, key, config, then the fields that are set, in the contract's order."""
        d: dict[str, Any] = {"status": self.status, "key": self.key, "config": self.config}
        for name in ("outputs", "metrics", "seconds", "finished", "reused"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageEntry:
        """Read the JSON object written by :meth:`to_dict`."""
        return cls(d["status"], d["key"], dict(d.get("config") or {}), d.get("outputs"), d.get("metrics"),
                   d.get("seconds"), d.get("finished"), d.get("reused"))


def is_run_manifest(path: Path) -> bool:
    """Whether ``path`` is a manifest of a pipeline run (this ``format``, any ``format_version``): what
    makes a directory a run directory the pipeline may write into."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("format") == FORMAT


def hash_outputs(root: Path, directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (sorted), as a path relative to ``root`` -> its sha256."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


@dataclass
class Manifest:
    """The whole manifest; ``stages`` is updated as the run goes."""

    inputs: Inputs
    recipe: dict[str, Any]
    versions: dict[str, Any]
    stages: dict[str, StageEntry] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the contract's order."""
        return {"format": self.format, "format_version": self.format_version, "inputs": self.inputs.to_dict(),
                "recipe": self.recipe, "versions": self.versions,
                "stages": {name: entry.to_dict() for name, entry in self.stages.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        """Read the JSON object written by :meth:`to_dict`; a stage entry that cannot be read is dropped."""
        stages = {}
        for name, entry in (d.get("stages") or {}).items():
            try:
                stages[name] = StageEntry.from_dict(entry)
            except (KeyError, TypeError, AttributeError, ValueError):
                continue
        return cls(Inputs.from_dict(d["inputs"]), dict(d.get("recipe") or {}), dict(d.get("versions") or {}), stages,
                   d["format"], d["format_version"])

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        """The manifest at ``path``; None where there is none, it is not JSON, or it has another format or
        format version."""
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
            return None
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, AttributeError, ValueError):
            return None

    def write(self, path: Path) -> None:
        """Write atomically (:func:`toolchain.core.fsio.write_json`)."""
        write_json(path, self.to_dict())
