"""PyTorch -> ONNX: export, check, shape inference, the node-to-module map, provenance, parity.

Two exporters, chosen on purpose:

* ``dynamo``: ``torch.export`` + onnxscript. Cleaner graphs (BERT-base: about half the nodes
  of the TorchScript export), Conv+BatchNorm already folded, module scopes in each node's
  ``metadata_props`` (``pkg.torch.onnx.name_scopes``). The exporter PyTorch maintains.
* ``torchscript``: the tracing exporter, deprecated by PyTorch but faster (0.1 s against 5 s for a small
  ResNet) and more forgiving of data-dependent Python; module scopes live in node names
  (``/encoder/layer.0/attention/self/query/MatMul``).

``auto`` (the default) picks TorchScript for transformers models whose attention ONNX Runtime's optimizer
fuses (:data:`toolchain.model.hf.FUSED_ATTENTION_TYPES`), dynamo for everything else. Those transformers
models are exported with eager attention (either exporter) and their heads and hidden size recorded in
``toolchain.attention``: TorchScript + eager is the one combination whose graph the optimizer fuses into
Attention nodes (MiniLM: 6 Attention, 12 SkipLayerNormalization, 6 BiasGelu, against 0 Attention for SDPA
or dynamo), which INT8 needs (QAttention).

Either way the exported file carries a node-to-module map (:mod:`toolchain.nodemap`) and provenance in
``metadata_props``; it is checked with ``onnx.checker``, shape-inferred, compared with PyTorch on ONNX
Runtime, and only then moved into place.
"""

from __future__ import annotations

import errno
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain import __version__
from toolchain.core.errors import ParityError, ToolchainError, option
from toolchain.core.errors import one_line as _one_line
from toolchain.core.fsio import atomic_dir, captured_output, check_output, commit_files
from toolchain.model.forward import data_metadata, export_module, make_inputs, run_torch
from toolchain.model.hf import attention_shape, eager_attention, fuses_attention
from toolchain.model.spec import WRAPPER_PREFIX, LoadedModel

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
TWO_GB = 2 * 1024**3


@dataclass
class ExportOptions:
    """How to export. ``batch``/``seq_len`` shape the example inputs traced (batch 2, so that the batch
    axis is not specialised to 1); ``parity_batches`` are the batch sizes checked against PyTorch at
    ``parity_seq_len``. Parity fails when cosine < ``min_cosine`` or when the largest absolute error
    exceeds ``rel_tolerance * max(1, max|reference|)``. ``exporter`` ``auto`` is resolved per model (see
    the module docstring); the result records the exporter used."""

    exporter: str = "auto"
    opset: int = 18
    batch: int = 2
    seq_len: int = 16
    parity: bool = True
    parity_batches: tuple[int, ...] = (1, 4)
    parity_seq_len: int = 32
    min_cosine: float = 0.9999
    rel_tolerance: float = 1e-3
    force: bool = False
    external_data: bool | None = None  # None: only when the weights exceed 2 GB
    keep_exporter_metadata: bool = False  # dynamo's per-node stack traces, FX nodes, class hierarchies


@dataclass
class ParityCheck:
    """PyTorch against ONNX Runtime (CPU EP) on the same random inputs, worst over all outputs."""

    batch: int
    seq_len: int | None
    max_abs_error: float
    cosine: float
    passed: bool


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: str
    source: str
    kind: str
    exporter: str
    opset: int
    inputs: list[dict[str, Any]]
    outputs: list[str]
    nodes: int
    mapped_nodes: int
    size_bytes: int
    external_data: list[str]
    parity: list[ParityCheck] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_model(model: LoadedModel, output: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Export ``model`` to ``output`` (an ``.onnx`` path) and check it; see the module docstring.

    Raises :class:`ToolchainError` on bad input (existing output without ``force``, a model that fails
    on its example inputs or cannot be traced) and :class:`ParityError` when ONNX Runtime's outputs
    differ from PyTorch's beyond tolerance; in every failure case nothing is left at ``output``.
    """
    opts = replace(options) if options else ExportOptions()  # a copy: the opset actually written is recorded in it
    if opts.exporter not in EXPORTERS:
        raise ToolchainError(f"unknown exporter {opts.exporter!r}; choose {', '.join(EXPORTERS)}")
    if opts.exporter == "auto":
        opts.exporter = "torchscript" if fuses_attention(model.module) else "dynamo"
    inputs_on_disk = tuple(p for p in (*model.input_paths, model.model_dir) if p)
    final = check_output(output, force=opts.force, inputs=inputs_on_disk)
    started = time.perf_counter()
    with eager_attention(model.module) as eager:
        return _export(model, final, opts, started, eager)


def _export(model: LoadedModel, final: Path, opts: ExportOptions, started: float, eager: bool) -> ExportResult:
    import torch

    wrapper = export_module(model)
    feeds = make_inputs(model, batch=opts.batch, seq_len=opts.seq_len if model.is_text else None)
    args = tuple(feeds[s.name] for s in model.inputs)
    try:
        with torch.inference_mode():
            outs = wrapper(*args)
    except ToolchainError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{s.name} {list(feeds[s.name].shape)} {s.dtype}" for s in model.inputs)
        raise ToolchainError(f"the model fails on inputs {shapes}: {_one_line(exc)}",
                             hint=f"check {option('--input-shape', 'the input shapes')}") from None
    if not model.output_names:
        model.output_names = ["output"] + [f"output_{i}" for i in range(1, len(outs))]

    param_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    external = opts.external_data if opts.external_data is not None else param_bytes > TWO_GB * 0.95

    with atomic_dir(final) as scratch:
        tmp = scratch / final.name
        _run_exporter(wrapper, args, model, tmp, opts, external)
        onnx_model, node_map = _postprocess(tmp, model, wrapper, args, opts, external, eager)
        parity = []
        if opts.parity:
            parity = check_parity(model, tmp, opts)
            bad = [p for p in parity if not p.passed]
            if bad:
                p = bad[0]
                other = "torchscript" if opts.exporter == "dynamo" else "dynamo"
                criterion = (f"cosine {p.cosine:.7f} < {opts.min_cosine}" if p.cosine < opts.min_cosine else
                             f"max abs error {p.max_abs_error:.3g} > {opts.rel_tolerance} x max(1, max|output|)")
                raise ParityError(f"ONNX output differs from PyTorch at batch {p.batch}: {criterion}",
                                  hint=f"try {option(f'--exporter {other}', f'exporter={other!r}')}, another {option('--opset', 'opset')}, or loosen {option('--min-cosine', 'min_cosine')}")
        extra = [f.name for f in scratch.iterdir() if f.name != final.name]
        commit_files(scratch, final)

    mapped = sum(1 for m, _ in node_map.nodes.values() if m is not None)
    return ExportResult(
        path=str(final), source=model.source, kind=model.kind, exporter=opts.exporter, opset=opts.opset,
        inputs=[s.to_dict() for s in model.inputs], outputs=list(model.output_names),
        nodes=len(onnx_model.graph.node), mapped_nodes=mapped,
        size_bytes=final.stat().st_size + sum((final.parent / e).stat().st_size for e in extra),
        external_data=extra, parity=parity, seconds=round(time.perf_counter() - started, 3))


def _run_exporter(wrapper, args: tuple, model: LoadedModel, path: Path, opts: ExportOptions, external: bool) -> None:
    import torch

    names = [s.name for s in model.inputs]
    # torch.onnx logs missing torchvision ops and deprecations; they are noise for our users
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        # the exporters print progress and IR dumps; keep stdout for our own (--json) output
        with captured_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if opts.exporter == "torchscript":
                dynamic_axes = {s.name: dict(s.dynamic_axes) for s in model.inputs}
                per_token = model.task in ("feature-extraction", "causal-lm", "masked-lm") and model.is_text
                dynamic_axes.update({o: {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
                                     for o in model.output_names})
                torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=names,
                                  output_names=model.output_names, dynamic_axes=dynamic_axes,
                                  opset_version=opts.opset, do_constant_folding=True,
                                  training=torch.onnx.TrainingMode.EVAL)
            else:
                dims: dict[str, Any] = {}
                # the wrapper takes *args, so the dynamic shapes of all inputs sit in one tuple
                shapes = tuple({axis: dims.setdefault(sym, torch.export.Dim(sym, min=1))
                                for axis, sym in s.dynamic_axes.items()} for s in model.inputs)
                program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names,
                                            output_names=model.output_names, dynamic_shapes=(shapes,),
                                            opset_version=opts.opset, optimize=True, verify=False)
                program.save(str(path), external_data=external)
    except ToolchainError:
        raise
    except Exception as exc:
        disk = _disk_error(exc)
        if disk is not None:  # a full disk is not the exporter's fault: the CLI reports it as such
            raise disk from None
        other = "torchscript" if opts.exporter == "dynamo" else "dynamo"
        cause = exc.__cause__ or exc
        raise ToolchainError(f"the {opts.exporter} exporter cannot export {model.source}: {_one_line(cause)}",
                             hint=f"try {option(f'--exporter {other}', f'exporter={other!r}')}") from None


# errno values that say the file system refused the write (full, over quota, read-only, not permitted)
_DISK_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM}  # only with a file name: otherwise it may not be about a file


def _disk_error(exc: BaseException) -> OSError | None:
    """The OSError in ``exc``'s chain of causes (the exporters wrap them) that says the write failed for
    lack of space or permission, else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (exc.errno in _DISK_ERRNOS or (exc.errno in _DENIED_ERRNOS and exc.filename)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _postprocess(path: Path, model: LoadedModel, wrapper, args: tuple, opts: ExportOptions, external: bool,
                 eager: bool = False):
    """Shape inference, node-to-module map, provenance, checker; rewrites ``path`` in place."""
    import onnx
    import torch

    from toolchain.core.onnxfile import set_metadata
    from toolchain.export.nodemap import attach, build_node_map

    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(path))
    except Exception as exc:  # shape inference is a help, not a requirement
        log.warning("shape inference failed: %s", _one_line(exc))
    if external and opts.exporter == "torchscript" and not any(
            t.external_data for t in onnx.load(str(path), load_external_data=False).graph.initializer):
        full = onnx.load(str(path))  # the TorchScript exporter writes external data only past 2 GB
        onnx.save(full, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    onnx_model = onnx.load(str(path), load_external_data=False)
    actual_opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), opts.opset)
    if actual_opset != opts.opset:
        log.warning("the %s exporter wrote opset %d (asked for %d)", opts.exporter, actual_opset, opts.opset)
        opts.opset = actual_opset
    node_map = build_node_map(onnx_model, wrapper, args, opts.exporter, strip_prefix=WRAPPER_PREFIX)
    attach(onnx_model, node_map)
    if not opts.keep_exporter_metadata:
        _strip_node_metadata(onnx_model)
    settings = {"exporter": opts.exporter, "opset": opts.opset, "torch": torch.__version__,
                "onnx": onnx.__version__, "example_batch": opts.batch,
                "dynamic_axes": {s.name: {str(k): v for k, v in s.dynamic_axes.items()} for s in model.inputs},
                "external_data": external}
    props = {
        "toolchain.version": __version__,
        "toolchain.source": model.source,
        "toolchain.source_kind": model.kind,
        "toolchain.source_hash": model.source_hash,
        "toolchain.task": model.task,
        **({"toolchain.model_type": model.model_type} if model.model_type else {}),
        "toolchain.description": model.description,
        "toolchain.export": json.dumps(settings, sort_keys=True),
        **data_metadata(model),
    }
    if eager:  # what ORT's attention fusion needs to know (toolchain.quantize reads it)
        props["toolchain.attention"] = json.dumps({"implementation": "eager", **attention_shape(model.module)})
    set_metadata(onnx_model, props)
    onnx_model.doc_string = f"{model.description} -- exported by toolchain {__version__}"
    onnx.save(onnx_model, str(path))  # external tensors keep pointing at the data file beside it
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ToolchainError(f"the exported model is not valid ONNX: {_one_line(exc)}") from None
    return onnx_model, node_map


# Per-node metadata the dynamo exporter writes that the node-to-module map already holds, or that leaks
# the local file system (stack traces): about a quarter of MobileNetV2's graph bytes, kept in the INT8
# model too. pkg.torch.onnx.name_scopes stays: it is the exporter's own record of module scopes.
_VERBOSE_NODE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node", "namespace",
                          "pkg.torch.onnx.class_hierarchy")


def _strip_node_metadata(model) -> None:
    for node in model.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key not in _VERBOSE_NODE_METADATA]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            for key, value in keep:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value


def check_parity(model: LoadedModel, onnx_path: str | Path, opts: ExportOptions) -> list[ParityCheck]:
    """Run PyTorch and ONNX Runtime (CPU EP, all graph optimizations) on the same random inputs at each
    of ``opts.parity_batches`` and compare every output."""
    from toolchain.runtime.session import create_session

    session = create_session(onnx_path, ["cpu"])
    seq = opts.parity_seq_len if model.is_text else None
    results = []
    for i, batch in enumerate(opts.parity_batches):
        feeds = make_inputs(model, batch=batch, seq_len=seq, seed=100 + i)
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        try:
            ref = run_torch(model, feeds)
        except Exception as exc:
            raise ToolchainError(f"PyTorch fails on the parity inputs {shapes}: {_one_line(exc)}",
                                 hint=f"a smaller {option('--seq-len', 'parity_seq_len')}, or {option('--no-parity', 'parity=False')}") from None
        try:
            got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        except Exception as exc:
            raise ParityError(f"ONNX Runtime fails on inputs {shapes} that PyTorch accepts: {_one_line(exc)}",
                              hint="an axis may not have been exported as dynamic") from None
        worst_err, worst_cos, ok = 0.0, 1.0, True
        for r, g in zip(ref, got, strict=True):
            if r.shape != g.shape:
                raise ParityError(f"output shape {list(g.shape)} from ONNX Runtime, {list(r.shape)} from PyTorch "
                                  f"at batch {batch}: a dimension was not exported as dynamic")
            err, cos = compare(r, g)
            worst_err, worst_cos = max(worst_err, err), min(worst_cos, cos)
            scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
            ok = ok and cos >= opts.min_cosine and err <= opts.rel_tolerance * scale
        results.append(ParityCheck(batch, seq, worst_err, worst_cos, ok))
    return results


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max absolute error, cosine similarity) of two arrays, in float64."""
    a = reference.astype(np.float64).ravel()
    b = candidate.astype(np.float64).ravel()
    if a.size == 0:
        return 0.0, 1.0
    err = float(np.abs(a - b).max())
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cos = 1.0 if na == 0 and nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0
    return err, cos


