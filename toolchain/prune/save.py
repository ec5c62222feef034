"""Writing a pruned model directory (format: :mod:`toolchain.formats.pruned`): plain tensors
(``weights.pt``) plus ``pruned.json``, the new shapes of the modules pruning changed. Loading
(:mod:`toolchain.model.pruned`) rebuilds the original architecture and re-shapes it, so no pickled code is
ever loaded."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.formats.pruned import (
    OPTIONAL_KEYS,
    PRUNED_FILE,
    WEIGHTS_FILE,
    CostsUsed,
    DataUsed,
    PrunedMeta,
    ShapeAttrs,
)
from toolchain.prune.config import PruneConfig, PruneResult
from toolchain.prune.graph import layer_widths

if TYPE_CHECKING:
    from toolchain.model.spec import LoadedModel

# structural attributes re-applied when a pruned model is rebuilt
_SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                "normalized_shape", "num_attention_heads", "attention_head_size", "all_head_size", "num_heads",
                "head_dim", "embed_dim", "hidden_size")


def changed_shapes(original: Any, pruned: Any) -> dict[str, ShapeAttrs]:
    """Per module path of ``pruned`` whose structural attributes (channels, features, heads ...) differ
    from the same module of ``original``: all its structural attributes (ints, tuples as lists)."""
    shapes = {}
    before_modules = dict(original.named_modules())
    for name, m in pruned.named_modules():
        before = before_modules.get(name)
        attrs = {a: _jsonable(getattr(m, a)) for a in _SHAPE_ATTRS
                 if hasattr(m, a) and isinstance(getattr(m, a), int | tuple)}
        if before is not None and any(getattr(before, a, None) != getattr(m, a) for a in attrs):
            shapes[name] = attrs
    return shapes


def save_pruned(result: PruneResult, loaded: LoadedModel, source_spec: str, out_dir: str | Path,
                config: PruneConfig, extra: dict[str, Any], force: bool = False) -> list[Path]:
    """``out_dir/weights.pt`` (tensors only) and ``out_dir/pruned.json``, written atomically; returns the
    paths. ``extra`` holds the optional keys of :class:`~toolchain.formats.pruned.PrunedMeta`
    (``weights``, ``input_shapes``, ``target``, ``costs``, ``data``; ``costs``/``data`` as
    :class:`~toolchain.formats.pruned.CostsUsed`/:class:`~toolchain.formats.pruned.DataUsed` or their
    dicts), written in its order; only the keys given are written. The result's ``widths`` are those of
    ``result.module`` (the model written)."""
    import io

    import torch

    from toolchain.core.fsio import write_files

    module = result.module
    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, buf)
    known = {k: v for k, v in extra.items() if k in OPTIONAL_KEYS}
    if isinstance(known.get("costs"), dict):
        known["costs"] = CostsUsed.from_dict(known["costs"])
    if isinstance(known.get("data"), dict):
        known["data"] = DataUsed.from_dict(known["data"])
    record = result.to_dict()
    record["widths"] = layer_widths(module)  # of the module written (a caller may pass an earlier step's)
    meta = PrunedMeta(source=source_spec, source_hash=loaded.source_hash, source_kind=loaded.kind, task=loaded.task,
                      modules=changed_shapes(loaded.module, module), config=asdict(config), result=record,
                      written=tuple(extra), other={k: v for k, v in extra.items() if k not in OPTIONAL_KEYS},
                      **known)
    # the files the model was read from are never written over, whatever ``force`` says
    return write_files({WEIGHTS_FILE: buf.getvalue(), PRUNED_FILE: meta.to_json()}, out_dir, force,
                       inputs=tuple(p for p in loaded.input_paths if p))


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
