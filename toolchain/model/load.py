"""Where a PyTorch model comes from, and the example inputs it needs.

A model source is one string:

* a name from the built-in catalogue (``toolchain models``): packaged pretrained models (``minilm``,
  ``mnist-cnn``) and architectures built from transformers configs with random weights (``resnet-50``,
  ``bert-base`` ...), labelled as such;
* a transformers model directory on disk (``config.json`` plus weights), with the head chosen by ``task``;
* ``package.module:factory`` or ``path/to/file.py:factory`` for any ``nn.Module`` factory, with an
  optional state_dict loaded with ``weights_only=True``;
* a pickled whole model (``.pt``/``.pth``/``.pkl``), only with ``allow_pickle=True``: unpickling runs code.

:func:`load_model` returns a :class:`LoadedModel`: the module in eval mode, the specs of its inputs (with
the batch axis, and the sequence axis for text, dynamic), the names of its outputs, and provenance.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from toolchain.core.errors import ToolchainError, option
from toolchain.core.errors import one_line as _one_line
from toolchain.core.fsio import sha256_file, sha256_text
from toolchain.model.catalogue import catalogue_index
from toolchain.model.hf import load_hf_dir
from toolchain.model.spec import TASKS, InputSpec, LoadedModel, parse_input_spec

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


# --------------------------------------------------------------------------------------------------
# example inputs and the export wrapper


# --------------------------------------------------------------------------------------------------
# the catalogue


# --------------------------------------------------------------------------------------------------
# transformers models


# --------------------------------------------------------------------------------------------------
# user modules


def _load_factory(spec: str, weights: str | None, input_specs: list[InputSpec], allow_pickle: bool) -> LoadedModel:
    from torch import nn

    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise ToolchainError(f"{target}: no such file")
        mod_spec = importlib.util.spec_from_file_location(f"toolchain_user_{file.stem}", file)
        module = importlib.util.module_from_spec(mod_spec)
        sys.path.insert(0, str(file.resolve().parent))  # so the file can import its neighbours
        try:
            mod_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            raise ToolchainError(f"{target}: failed to import ({_one_line(exc)})") from None
        code_hash = sha256_file(file)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # `pkg.mod:factory` from the current directory, as python -m does
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as exc:
            raise ToolchainError(f"cannot import module {target!r} ({_one_line(exc)})",
                                 hint="is it on PYTHONPATH? a file path must end in .py") from None
        code_hash = sha256_file(Path(module.__file__)) if getattr(module, "__file__", None) else sha256_text(target)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ToolchainError(f"{target} has no callable {attr!r}")
    try:
        net = factory()
    except (Exception, SystemExit) as exc:
        raise ToolchainError(f"{spec}: the factory raised {_one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ToolchainError(f"{spec}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    digest_parts = [code_hash]
    if weights:
        state = _load_state_dict(Path(weights), allow_pickle)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ToolchainError(f"{weights}: state_dict does not fit {spec} ({_one_line(exc)})") from None
        digest_parts.append(sha256_file(Path(weights)))
    loaded = _user_loaded(net, spec, input_specs, sha256_text("|".join(digest_parts)),
                          f"{type(net).__name__} from {spec}" + (f" with weights {weights}" if weights else ""))
    loaded.input_paths = [p for p in (getattr(module, "__file__", None), weights) if p]
    return loaded


def _load_state_dict(path: Path, allow_pickle: bool) -> dict:
    import pickle

    import torch

    if not path.is_file():
        raise ToolchainError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError:
        raise ToolchainError(f"{path}: not a plain state_dict; refusing to unpickle arbitrary objects",
                             hint="save weights with torch.save(model.state_dict(), ...), or pass " + option("--allow-pickle", "allow_pickle=True") + " "
                                  "only if you trust the file") from None
    except Exception as exc:
        raise ToolchainError(f"{path}: unreadable weights file ({_one_line(exc)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if all(isinstance(k, str) for k in obj):
            return obj
    raise ToolchainError(f"{path}: holds {type(obj).__name__}, not a state_dict")


def _load_pickled_model(path: Path, input_specs: list[InputSpec], allow_pickle: bool) -> LoadedModel:
    import torch
    from torch import nn

    if not allow_pickle:
        raise ToolchainError(f"{path}: refusing to unpickle a whole model (unpickling runs arbitrary code)",
                             hint=f"pass {option('--allow-pickle', 'allow_pickle=True')} only if you trust the file, or use module:factory {option('--weights', 'weights=')}"
                                  "state_dict.pt")
    try:
        net = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ToolchainError(f"{path}: cannot unpickle ({_one_line(exc)})") from None
    if not isinstance(net, nn.Module):
        raise ToolchainError(f"{path}: holds {type(net).__name__}, not a torch.nn.Module")
    loaded = _user_loaded(net, str(path), input_specs, sha256_file(path), f"pickled {type(net).__name__} from {path}")
    loaded.input_paths = [str(path)]
    return loaded


def _user_loaded(net: nn.Module, source: str, input_specs: list[InputSpec], digest: str, description: str) -> LoadedModel:
    if not input_specs:
        raise ToolchainError(f"{source}: a user model needs its input shape",
                             hint="pass " + option("--input-shape", "input_shapes") + ", e.g. "
                                  + option("--input-shape 1x3x224x224", "['1x3x224x224']") + " or "
                                  + option("--input-shape ids:1x128:int64", "['ids:1x128:int64']"))
    # Output names are unknown until the model runs: export names them output, output_1, ...
    return LoadedModel(module=net.eval(), inputs=input_specs, output_names=[], source=source,
                       kind="user", description=description, source_hash=digest, task="custom")


# --------------------------------------------------------------------------------------------------
# entry point


def load_model(source: str, *, task: str = "auto", weights: str | None = None,
               input_shapes: list[str] | None = None, allow_pickle: bool = False) -> LoadedModel:
    """Load a model from a catalogue name, a transformers directory, ``module:factory``, a pickle, or a
    directory written by ``toolchain prune``.

    ``task`` picks the transformers head (see :data:`TASKS`). ``input_shapes`` (``[NAME:]DIMS[:DTYPE]``)
    are required for user modules and override the example shape of others. Raises
    :class:`ToolchainError` with one clear line on any bad input.
    """
    if task not in TASKS:
        raise ToolchainError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    specs = [parse_input_spec(s, i) for i, s in enumerate(input_shapes or [])]
    entries = catalogue_index()
    key = source.strip().lower().replace("_", "-")
    path = Path(source)
    is_factory = re.fullmatch(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*", source) is not None and not path.exists()
    if weights and not is_factory:
        raise ToolchainError(f"{option('--weights', 'weights')} goes with a module:factory model",
                             hint="catalogue models, transformers directories and pickles carry their own weights")
    if key in entries and not path.exists():
        loaded = entries[key].build()
    elif path.is_dir() and (path / "pruned.json").is_file():  # `toolchain prune` output: tensors + shapes
        from toolchain.model.pruned import load_pruned

        loaded = load_pruned(path, load_model)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ToolchainError(f"{source}: a directory without config.json is not a transformers model")
        loaded = load_hf_dir(path, task)
    elif path.is_file() and path.suffix in (".pt", ".pth", ".pkl", ".bin"):
        return _load_pickled_model(path, specs, allow_pickle)
    elif is_factory:
        return _load_factory(source, weights, specs, allow_pickle)
    else:
        known = ", ".join(entries)
        raise ToolchainError(f"unknown model {source!r}: not a catalogue name, a transformers directory, "
                             f"module:factory or a .pt file", hint=f"catalogue: {known}")
    if specs:
        loaded.inputs = _override_shapes(loaded.inputs, specs)
    return loaded


def _override_shapes(inputs: list[InputSpec], specs: list[InputSpec]) -> list[InputSpec]:
    by_name = {s.name: s for s in specs}
    unnamed = [s for s in specs if s.name.startswith("input")]
    out = []
    for i, spec in enumerate(inputs):
        new = by_name.get(spec.name) or (unnamed[i] if i < len(unnamed) else None)
        if new is None:
            out.append(spec)
            continue
        if len(new.shape) != len(spec.shape):
            raise ToolchainError(f"input {spec.name!r} has {len(spec.shape)} dimensions {list(spec.shape)}; "
                                 f"{option('--input-shape', 'input_shapes')} gave {len(new.shape)}")
        out.append(InputSpec(spec.name, new.shape, spec.dtype, spec.dynamic_axes, spec.role, spec.high))
    unknown = set(by_name) - {s.name for s in inputs} - {s.name for s in unnamed}
    if unknown:
        raise ToolchainError(f"unknown input {sorted(unknown)[0]!r}; the model takes {', '.join(s.name for s in inputs)}")
    return out


# --------------------------------------------------------------------------------------------------
# hashing helpers
