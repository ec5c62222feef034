"""Loading a directory written by ``toolchain prune`` (format: :mod:`toolchain.formats.pruned`) back into a
:class:`~toolchain.model.spec.LoadedModel`: the original source, re-shaped, with the pruned tensors."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from toolchain.core.errors import ToolchainError
from toolchain.formats.pruned import PRUNED_FILE, WEIGHTS_FILE, read_pruned
from toolchain.model.spec import LoadedModel

_loading: ContextVar[tuple[Path, ...]] = ContextVar("toolchain_pruned_loading", default=())
"""The pruned directories being loaded, outermost first: a source chain that comes back to one is a cycle."""


def load_pruned(path: str | Path, load_source: Callable[..., LoadedModel]) -> LoadedModel:
    """Rebuild a pruned model: load its original source, re-shape the pruned modules, load the tensors
    (``weights_only=True``: nothing is unpickled but tensors). ``load_source`` is the loader of the
    original model (:func:`toolchain.model.load.load_model`, passed in so the two modules do not import
    each other)."""
    import torch

    p = Path(path)
    meta = read_pruned(p)
    here = p.expanduser().resolve()
    chain = _loading.get()
    source = Path(meta.source).expanduser()
    if source.exists() and source.resolve() == here:
        raise ToolchainError(f"{p / PRUNED_FILE}: names its own directory as its source model, so it cannot be "
                             "rebuilt", hint="prune the original model again into another directory")
    if here in chain:
        cycle = " -> ".join(str(d) for d in (*chain[chain.index(here):], here))
        raise ToolchainError(f"{p / PRUNED_FILE}: its source models form a cycle ({cycle}), so it cannot be rebuilt",
                             hint="prune the original model again into another directory")
    token = _loading.set((*chain, here))
    try:
        loaded = load_source(meta.source, weights=meta.weights, input_shapes=meta.input_shapes)
    finally:
        _loading.reset(token)
    if loaded.source_hash != meta.source_hash:
        raise ToolchainError(f"{p}: its original model {meta.source!r} has changed since it was pruned "
                             "(source hash differs)", hint="prune the current model again")
    try:
        state = torch.load(p / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ToolchainError(f"{p / WEIGHTS_FILE}: not a tensor file ({type(exc).__name__})") from None
    module = loaded.module
    modules = dict(module.named_modules())
    for name, attrs in meta.modules.items():
        m = modules.get(name)
        if m is None:
            raise ToolchainError(f"{p}: names a module {name!r} the original model does not have")
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        m = modules.get(owner)
        current = getattr(m, leaf, None) if m is not None else None
        if isinstance(current, torch.nn.Parameter) and current.shape != tensor.shape:
            setattr(m, leaf, torch.nn.Parameter(torch.empty_like(tensor), requires_grad=current.requires_grad))
        elif isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            m._buffers[leaf] = torch.empty_like(tensor)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ToolchainError(f"{p}: the weights do not fit the rebuilt model ({str(exc).splitlines()[0]})") from None
    module.eval()
    loaded.source = str(p)
    loaded.kind = f"pruned ({loaded.kind})"
    loaded.description = f"{loaded.description}, pruned: {meta.params_after:,} of " \
                         f"{meta.params_before:,} parameters"
    loaded.input_paths = [*loaded.input_paths, str(p / WEIGHTS_FILE), str(p / PRUNED_FILE)]
    return loaded
