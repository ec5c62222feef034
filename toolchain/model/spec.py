"""What a loaded model is: :class:`InputSpec` (one input: example shape, dynamic axes, how to synthesise
it) and :class:`LoadedModel` (the module in eval mode, its inputs and outputs, provenance), and parsing
``--input-shape`` style specs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


TASKS = ("auto", "feature-extraction", "sequence-classification", "image-classification", "causal-lm", "masked-lm")


@dataclass(frozen=True)
class InputSpec:
    """One model input. ``shape`` is the example shape; ``dynamic_axes`` maps axis index -> symbolic name.

    Integer inputs (token ids) are drawn from ``[0, high)``; ``role`` tells how to synthesise them
    (``ids``, ``mask``, ``type_ids`` or ``tensor``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic_axes: dict[int, str] = field(default_factory=lambda: {0: "batch"})
    role: str = "tensor"
    high: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()}, "role": self.role, "high": self.high}


@dataclass
class LoadedModel:
    """A PyTorch model ready to export: ``module`` is in eval mode.

    ``output_fields`` names the fields picked from a transformers ``ModelOutput`` (None for a plain module,
    whose tensor or tuple of tensors is taken as is). ``kind`` is ``pretrained``, ``random-weights``,
    ``partly-random`` (a checkpoint without the head the task needs) or ``user``. ``source_hash`` is a sha256 over what defines the weights (files, or config and seed).
    """

    module: nn.Module
    inputs: list[InputSpec]
    output_names: list[str]
    source: str
    kind: str
    description: str
    source_hash: str
    task: str
    output_fields: list[str] | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    model_dir: str | None = None
    model_type: str | None = None  # transformers config.model_type, for ORT's transformer fusions
    input_paths: list[str] = field(default_factory=list)  # files the model was read from: never overwritten

    @property
    def is_text(self) -> bool:
        return any(spec.role == "ids" for spec in self.inputs)


def parse_dims(text: str) -> tuple[int, ...]:
    """Parse ``1x3x224x224`` (or ``1,3,224,224``) into a tuple of positive ints."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise ToolchainError(f"bad shape {text!r}: expected dimensions like 1x3x224x224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ToolchainError(f"bad shape {text!r}: expected positive dimensions like 1x3x224x224")
    return dims


def parse_input_spec(text: str, index: int = 0) -> InputSpec:
    """Parse ``[NAME:]DIMS[:DTYPE[:HIGH]]``, e.g. ``1x3x224x224``, ``x:1x3x32x32`` or ``ids:1x128:int64:30522``.

    Random integer inputs are drawn from ``[0, HIGH)``; HIGH defaults to 2 (valid for any embedding or
    mask), so give the vocabulary size for token ids."""
    parts = text.split(":")
    default_name = f"input_{index}" if index else "input"
    if len(parts) == 1:
        name, dims, rest = default_name, parts[0], []
    elif re.fullmatch(r"\d[0-9x,]*", parts[0]):
        name, dims, rest = default_name, parts[0], parts[1:]
    else:
        name, dims, rest = parts[0], parts[1], parts[2:]
    if len(rest) > 2:
        raise ToolchainError(f"bad input spec {text!r}: expected [NAME:]DIMS[:DTYPE[:HIGH]], e.g. ids:1x128:int64:30522")
    dtype = rest[0] if rest else "float32"
    if dtype not in ("float32", "float16", "int64", "int32", "bool"):
        raise ToolchainError(f"bad input spec {text!r}: dtype must be float32, float16, int64, int32 or bool")
    high = 2
    if len(rest) == 2:
        if not rest[1].isdigit() or int(rest[1]) < 1 or dtype not in ("int64", "int32"):
            raise ToolchainError(f"bad input spec {text!r}: HIGH is a positive integer bound for int inputs")
        high = int(rest[1])
    role = "ids" if dtype in ("int64", "int32") else "tensor"
    return InputSpec(name=name, shape=parse_dims(dims), dtype=dtype, role=role, high=high)


WRAPPER_PREFIX = "model."
