"""Running a :class:`~toolchain.model.spec.LoadedModel`: the export wrapper (positional tensors in, a tuple
of tensors out), random example inputs, PyTorch outputs as numpy, the metadata data readers need, and a
JSON-ready description."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError
from toolchain.model.spec import LoadedModel

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def make_inputs(model: LoadedModel, batch: int | None = None, seq_len: int | None = None,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Random example inputs for ``model``: a dict input name -> tensor.

    ``batch`` and ``seq_len`` override the example shape's axis 0 and, for text, axis 1. Token ids are
    uniform in ``[0, high)``; the attention mask pads the second half of the last row, so masking is
    exercised whenever the batch has more than one row.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    feeds: dict[str, torch.Tensor] = {}
    for spec in model.inputs:
        shape = list(spec.shape)
        if batch is not None:
            shape[0] = batch
        if seq_len is not None and spec.dynamic_axes.get(1) == "sequence" and len(shape) > 1:
            shape[1] = seq_len
        dtype = getattr(torch, spec.dtype)
        if spec.role == "ids":
            t = torch.randint(0, spec.high, shape, generator=gen, dtype=dtype)
        elif spec.role == "mask":
            t = torch.ones(shape, dtype=dtype)
            if shape[0] > 1 and len(shape) > 1 and shape[1] > 1:
                t[-1, shape[1] // 2:] = 0
        elif spec.role == "type_ids":
            t = torch.zeros(shape, dtype=dtype)
        elif dtype.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dtype)
        else:
            t = torch.randint(0, spec.high, shape, generator=gen, dtype=dtype)
        feeds[spec.name] = t
    return feeds


def export_module(model: LoadedModel) -> nn.Module:
    """Wrap ``model.module`` so it takes positional tensors and returns a tuple of tensors.

    The wrapped model sits under the attribute ``model``, so module paths in the export start with
    ``model.``; :data:`WRAPPER_PREFIX` is stripped again when nodes are mapped back to modules.
    The wrapper and every submodule are put in eval mode.
    """
    from torch import nn

    class ExportWrapper(nn.Module):
        def __init__(self, inner: nn.Module, names: list[str], fields: list[str] | None, kwargs: dict[str, Any]):
            super().__init__()
            self.model = inner
            self._names = names
            self._fields = fields
            self._kwargs = kwargs

        def forward(self, *args):
            if self._fields is not None:
                out = self.model(**dict(zip(self._names, args, strict=True)), **self._kwargs)
                return tuple(out[f] for f in self._fields)
            return _flatten_outputs(self.model(*args))

    wrapper = ExportWrapper(model.module, [s.name for s in model.inputs], model.output_fields, model.call_kwargs)
    return wrapper.eval()


def data_metadata(model: LoadedModel) -> dict[str, str]:
    """What data readers need to know of a model, as the ``toolchain.*`` metadata an export stores: the
    input specs, the preprocessing, and the tokenizer directory of a text model."""
    import json

    props = {"toolchain.inputs": json.dumps([s.to_dict() for s in model.inputs])}
    if model.preprocessing:
        props["toolchain.preprocessing"] = json.dumps(model.preprocessing)
    if model.model_dir and any((Path(model.model_dir) / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        props["toolchain.tokenizer"] = str(Path(model.model_dir).resolve())  # for text calibration data
    return props


def _flatten_outputs(out: Any) -> tuple:
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(t for v in out.values() for t in _flatten_outputs(v))
    if isinstance(out, (list, tuple)):
        return tuple(t for v in out for t in _flatten_outputs(v))
    raise ToolchainError(f"the model returned {type(out).__name__}; expected a tensor or a tuple/dict of tensors")


def run_torch(model: LoadedModel, feeds: dict[str, torch.Tensor]) -> list[Any]:
    """Run the model in PyTorch (no grad) and return its outputs as numpy arrays, in output order."""
    import torch

    wrapper = export_module(model)
    with torch.inference_mode():
        outs = wrapper(*[feeds[s.name] for s in model.inputs])
    return [o.detach().float().numpy() if o.is_floating_point() else o.detach().numpy() for o in outs]


def describe(model: LoadedModel) -> dict[str, Any]:
    """A JSON-ready summary: source, kind, task, parameter count, inputs, outputs, hash."""
    return {
        "source": model.source, "kind": model.kind, "task": model.task, "description": model.description,
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "inputs": [s.to_dict() for s in model.inputs], "outputs": model.output_names,
        "source_hash": model.source_hash,
    }
