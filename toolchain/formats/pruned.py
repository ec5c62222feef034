"""The on-disk contract of a pruned model directory, as ``toolchain prune`` writes it.

A directory holds two files:

* ``weights.pt`` (:data:`WEIGHTS_FILE`): the pruned ``state_dict``, plain tensors only (loadable with
  ``torch.load(..., weights_only=True)``);
* ``pruned.json`` (:data:`PRUNED_FILE`): :class:`PrunedMeta`, what rebuilds the model: the original
  model's source spec and hash, and the new value of every structural attribute a pruned module changed
  (``out_channels``, ``num_attention_heads`` ...), plus the pruning config and result for the record.

This module is pure JSON (no torch): writer (:mod:`toolchain.prune.save`) and reader
(:mod:`toolchain.model.pruned`) meet here. The JSON is ``json.dumps(..., indent=2)`` of the keys in
:meth:`PrunedMeta.to_dict` order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError

PRUNED_FILE = "pruned.json"
WEIGHTS_FILE = "weights.pt"
FORMAT = "toolchain.pruned-model"
FORMAT_VERSION = 1

# the keys after "result", in the order they are written; a file may hold any of them (the pipeline
# writes only "target"), and :attr:`PrunedMeta.written` records which
OPTIONAL_KEYS = ("weights", "input_shapes", "target", "costs", "data")
_REQUIRED_KEYS = ("source", "source_hash", "source_kind", "task", "modules", "config", "result")

ShapeAttrs = dict[str, int | list[int]]
"""A pruned module's structural attributes: name -> int, or list of ints (a tuple such as
``normalized_shape``, as JSON has it)."""


@dataclass(frozen=True)
class CostsUsed:
    """The cost table a pruning run read: its path, the sha256 of the ONNX model it was measured on, its
    meter (the table's ``meter`` block) and attribution method."""

    path: str
    model_sha256: str | None
    meter: dict[str, Any]
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "model_sha256": self.model_sha256, "meter": self.meter, "method": self.method}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostsUsed:
        return cls(path=d["path"], model_sha256=d.get("model_sha256"), meter=d.get("meter") or {},
                   method=d.get("method", ""))


@dataclass(frozen=True)
class DataUsed:
    """The data specs a pruning run judged (``eval``) and fine-tuned (``train``, None: held out of eval)
    on, and the samples read from each."""

    eval: str
    train: str | None
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"eval": self.eval, "train": self.train, "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataUsed:
        return cls(eval=d["eval"], train=d.get("train"), samples=d["samples"])


@dataclass(frozen=True)
class PrunedMeta:
    """The content of ``pruned.json``.

    ``modules`` maps a module path to the structural attributes pruning changed (:data:`ShapeAttrs`);
    ``config`` is the :class:`~toolchain.prune.PruneConfig` and ``result`` the
    :meth:`~toolchain.prune.PruneResult.to_dict` of the run (kept as JSON: this layer does not know the
    prune stage). ``weights``/``input_shapes`` are what the original source needs to load again (a
    ``module:factory`` source); ``target``, ``costs``, ``data`` record where the run's numbers come
    from. ``written`` names the optional keys the file holds, in order (see :data:`OPTIONAL_KEYS`);
    ``other`` keeps keys this version does not know, as read."""

    source: str
    source_hash: str
    source_kind: str
    task: str | None
    modules: dict[str, ShapeAttrs]
    config: dict[str, Any]
    result: dict[str, Any]
    weights: str | None = None
    input_shapes: list[str] | None = None
    target: str | None = None
    costs: CostsUsed | None = None
    data: DataUsed | None = None
    written: tuple[str, ...] = OPTIONAL_KEYS
    other: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def params_before(self) -> int:
        """Parameters of the original model."""
        return int(self.result["params_before"])

    @property
    def params_after(self) -> int:
        """Parameters of the pruned model."""
        return int(self.result["params_after"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in file order."""
        d: dict[str, Any] = {"format": self.format, "format_version": self.format_version, "source": self.source,
                             "source_hash": self.source_hash, "source_kind": self.source_kind, "task": self.task,
                             "modules": self.modules, "config": self.config, "result": self.result}
        optional: dict[str, Any] = {"weights": self.weights, "input_shapes": self.input_shapes, "target": self.target,
                                    "costs": self.costs.to_dict() if self.costs else None,
                                    "data": self.data.to_dict() if self.data else None}
        for key in self.written:
            d[key] = optional[key] if key in optional else self.other[key]
        return d

    def to_json(self) -> str:
        """``pruned.json`` as written: the object of :meth:`to_dict` with a two-space indent."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrunedMeta:
        """Read the JSON object; raises ``KeyError`` for a missing required key."""
        known = set(_REQUIRED_KEYS) | set(OPTIONAL_KEYS) | {"format", "format_version"}
        written = tuple(k for k in d if k in OPTIONAL_KEYS or k not in known)
        costs, data = d.get("costs"), d.get("data")
        return cls(source=d["source"], source_hash=d["source_hash"], source_kind=d["source_kind"], task=d["task"],
                   modules=d["modules"], config=d["config"], result=d["result"], weights=d.get("weights"),
                   input_shapes=d.get("input_shapes"), target=d.get("target"),
                   costs=CostsUsed.from_dict(costs) if isinstance(costs, dict) else None,
                   data=DataUsed.from_dict(data) if isinstance(data, dict) else None,
                   written=written, other={k: v for k, v in d.items() if k not in known},
                   format=d["format"], format_version=d["format_version"])

    @classmethod
    def from_json(cls, text: str) -> PrunedMeta:
        """Parse ``pruned.json`` text; raises ``ValueError`` for bad JSON, ``KeyError`` for a missing key."""
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(d)


def read_pruned(directory: str | Path) -> PrunedMeta:
    """``directory/pruned.json``, checked to be this format and version; a :class:`ToolchainError`
    (one line) otherwise."""
    p = Path(directory)
    try:
        d = json.loads((p / PRUNED_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ToolchainError(f"{p / PRUNED_FILE}: unreadable ({exc})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
        raise ToolchainError(f"{p}: not a toolchain pruned model of format version {FORMAT_VERSION}")
    try:
        return PrunedMeta.from_dict(d)
    except KeyError as exc:
        raise ToolchainError(f"{p / PRUNED_FILE}: unreadable (no key {exc})") from None
