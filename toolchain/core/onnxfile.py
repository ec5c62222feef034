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


def load_graph(onnx_path: str | Path, *, check_data: bool = True):
    """The ``ModelProto`` of an ONNX file without its external weights; one clear error when the file is
    missing, corrupt or holds no graph, and (``check_data``) when an external data file it references is
    missing or too short (:func:`check_external_data`)."""
    import onnx

    if not Path(onnx_path).is_file():
        raise ToolchainError(f"{onnx_path}: no such ONNX file")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ToolchainError(f"{onnx_path}: not a readable ONNX model ({one_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise ToolchainError(f"{onnx_path}: not an ONNX model (no graph or no opset)")
    if check_data:
        check_external_data(onnx_path, model)
    return model


def _graph_tensors(graph):
    """Every ``TensorProto`` of ``graph``: initializers, sparse initializers and node attributes, subgraphs
    included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for g in attr.graphs:
                yield from _graph_tensors(g)


def _tensor_nbytes(tensor) -> int | None:
    """Bytes of a fixed-size tensor's raw data (dims x element size), None when it cannot be told."""
    import math

    import onnx

    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # noqa: BLE001 - unknown or variable-size types: no size to check against
        return None
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}.get(tensor.data_type)
    numel = math.prod(tensor.dims)
    return (numel * bits + 7) // 8 if bits else numel * itemsize


def external_data_files(onnx_path: str | Path, model=None) -> list[str]:
    """The external data files ``onnx_path`` references (``location`` of its EXTERNAL tensors, relative to
    its folder), each once, in the order first met; [] for a model that holds all its weights."""
    import onnx

    if model is None:
        model = onnx.load(str(onnx_path), load_external_data=False)
    names: list[str] = []
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            if location and location not in names:
                names.append(location)
    return names


def check_external_data(onnx_path: str | Path, model=None) -> None:
    """Fail in one line when a tensor of ``onnx_path`` (``model``: its graph, already loaded without its
    weights) is stored in an external data file that is missing or shorter than the tensor's
    ``offset + length`` -- before any session is built, whose error would name a scratch copy instead."""
    import onnx

    if model is None:
        model = onnx.load(str(onnx_path), load_external_data=False)
    base = Path(onnx_path).parent
    sizes: dict[str, int | None] = {}
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        data = base / location
        if location not in sizes:
            sizes[location] = data.stat().st_size if location and data.is_file() else None
        size = sizes[location]
        if size is None:
            raise ToolchainError(f"{data}: the external data file of {onnx_path} is missing (tensor {tensor.name!r} "
                                 "is stored there)", hint="copy it next to the model, or export the model again")
        try:
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else _tensor_nbytes(tensor)
        except ValueError:
            raise ToolchainError(f"{onnx_path}: tensor {tensor.name!r} has a malformed external-data offset or "
                                 "length", hint="export the model again") from None
        if offset < 0 or (length is not None and length < 0):
            raise ToolchainError(f"{onnx_path}: tensor {tensor.name!r} has a negative external-data offset or "
                                 "length", hint="export the model again")
        end = offset + (length or 0)
        if end > size:
            raise ToolchainError(f"{data}: the external data file of {onnx_path} is truncated ({size} bytes; tensor "
                                 f"{tensor.name!r} needs bytes {offset}..{end})",
                                 hint="copy the whole file again, or export the model again")


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
