"""Reading an ONNX file without its weights: the graph, its inputs, its ``metadata_props`` and the
provenance an export stores there (``toolchain.*`` keys), and setting metadata on a ``ModelProto``.
``onnx`` is imported inside the functions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import onnx


@dataclass(frozen=True)
class ModelInput:
    """An ONNX graph input: ``shape`` holds ints for fixed dims and names for symbolic ones."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.name} [{', '.join(str(d) for d in self.shape)}] {self.dtype}"


def load_graph(onnx_path: str | Path):
    """The ``ModelProto`` of an ONNX file without its external weights; one clear error when the file is
    missing, corrupt or holds no graph."""
    import onnx

    if not Path(onnx_path).is_file():
        raise ToolchainError(f"{onnx_path}: no such ONNX file")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ToolchainError(f"{onnx_path}: not a readable ONNX model ({one_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise ToolchainError(f"{onnx_path}: not an ONNX model (no graph or no opset)")
    return model


def model_inputs(onnx_path: str | Path) -> list[ModelInput]:
    """The graph inputs of an ONNX file (initializers excluded), without loading its weights."""
    import onnx

    model = load_graph(onnx_path)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        shape = tuple(d.dim_param or (d.dim_value if d.dim_value else "?") for d in t.shape.dim)
        out.append(ModelInput(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out


def model_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in load_graph(onnx_path).metadata_props}


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The ``toolchain.*`` metadata of an ONNX file (JSON values decoded), without loading its weights."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ToolchainError(f"{path}: no such file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise ToolchainError(f"{path}: not a readable ONNX model ({one_line(exc)})") from None
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(META_PREFIX) and prop.key != "toolchain.node_module_map":
            key = prop.key[len(META_PREFIX):]
            try:
                out[key] = json.loads(prop.value) if prop.value[:1] in "[{" else prop.value
            except json.JSONDecodeError:
                out[key] = prop.value
    return out


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set ``metadata_props`` keys on ``model``, keeping the others."""
    existing = {p.key: p.value for p in model.metadata_props}
    existing.update(props)
    del model.metadata_props[:]
    for key, value in existing.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


META_PREFIX = "toolchain."
