"""ONNX Runtime profiler traces -> per-node kernel times.

The profiler slows some models noticeably, so energy windows never run with it on: this is a separate
run whose only job is the per-node split of time.

ORT writes the optimized graph beside the trace (to resolve the profiled names), but it cannot serialize
a graph holding subgraphs a provider compiled (OpenVINO, TensorRT): for those the profiled session writes
the provider's EP context model instead (``ep.context_enable``), whose ``EPContext`` nodes say which
tensors bound each compiled subgraph (:mod:`toolchain.profile.fused`), and else neither.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.core.errors import ToolchainError, one_line
from toolchain.runtime.session import create_session
from toolchain.runtime.timing import interleaved_samples


@dataclass(frozen=True)
class NodeTime:
    """Kernel time of one (optimized) node over all profiled runs: ``total_us`` microseconds in ``calls``
    kernel launches; ``op_type`` and ``provider`` as the profiler reports them (``args.op_name``)."""

    name: str
    op_type: str
    provider: str
    total_us: float
    calls: int
    per_run_us: tuple[float, ...] = ()  # kernel time in each profiled run (for the run-to-run spread)
    # shapes of the first event (``args.input_type_shape`` / ``output_type_shape``); None where not reported
    input_shapes: tuple[tuple[int, ...] | None, ...] = ()
    output_shapes: tuple[tuple[int, ...] | None, ...] = ()


@dataclass
class NodeProfile:
    """Per-node times from one profiled session, plus the optimized graph ORT wrote (to resolve names;
    None when it could not be written) and, for a provider that compiles subgraphs, its EP context model."""

    nodes: list[NodeTime]
    runs: int
    optimized_model: Path | None
    # wall time (perf_counter around ``run``) of each profiled run and, with ``reference``, of the unprofiled
    # session's runs alternated with them
    profiled_wall_us: tuple[float, ...] = ()
    plain_wall_us: tuple[float, ...] = ()
    context_model: Path | None = None

    @property
    def total_us(self) -> float:
        return sum(n.total_us for n in self.nodes)


def parse_trace(path: str | os.PathLike, skip_runs: int = 0) -> list[NodeTime]:
    """Sum the ``*_kernel_time`` events (``cat == "Node"``) of an ORT profile, per node name.

    ``skip_runs`` drops the events of the first runs (warm-up), located by the ``model_run`` events."""
    try:
        events = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ToolchainError(f"{path}: not a readable ONNX Runtime profile ({one_line(exc)})") from None
    runs = sorted((ev["ts"], ev["ts"] + ev["dur"]) for ev in events
                  if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    cutoff = runs[skip_runs - 1][1] if 0 < skip_runs <= len(runs) else -1
    kept = [r for r in runs if r[1] > cutoff]
    starts = [r[0] for r in kept]
    totals: dict[str, list] = {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time") or ev["ts"] <= cutoff:
            continue
        args = ev.get("args", {})
        name = ev["name"][: -len("_kernel_time")]
        entry = totals.setdefault(name, [args.get("op_name", ""), args.get("provider", ""), 0.0, 0,
                                         [0.0] * max(len(kept), 1), _shapes(args.get("input_type_shape")),
                                         _shapes(args.get("output_type_shape"))])
        dur = float(ev.get("dur", 0))
        entry[2] += dur
        entry[3] += 1
        entry[4][max(bisect.bisect_right(starts, ev["ts"]) - 1, 0)] += dur
    return [NodeTime(n, op, prov, us, calls, tuple(per_run), ins, outs)
            for n, (op, prov, us, calls, per_run, ins, outs) in totals.items()]


def _shapes(value) -> tuple[tuple[int, ...] | None, ...]:
    """``[{"float": [1, 3, 8, 8]}, ...]`` (the profiler's type-shape lists) -> ``((1, 3, 8, 8), ...)``."""
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        dims = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else None
        ok = isinstance(dims, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
        out.append(tuple(dims) if ok else None)
    return tuple(out)


def profile_nodes(model_path: str | os.PathLike, feeds: dict[str, np.ndarray], *, providers: list[str] | None = None,
                  runs: int = 10, warmup: int = 2, threads: int | None = None,
                  workdir: str | os.PathLike | None = None, provider_options: list[dict] | None = None,
                  reference: bool = False) -> NodeProfile:
    """Run ``model_path`` ``warmup + runs`` times under ORT's profiler and return the per-node kernel
    times of the last ``runs`` runs. With ``reference``, a second, unprofiled session runs alternately with
    the profiled one (thread-pool spinning off in both): its latency is the end-to-end reference the
    per-layer times are checked against, time-matched, and the ratio of the two is the profiler's overhead.

    The optimized graph is saved to ``workdir`` (a temporary directory if None) so that profiled names
    can be resolved to modules (:meth:`toolchain.nodemap.NodeModuleMap.resolve`); for a provider that
    compiles subgraphs, the EP context model instead (see the module's docstring)."""
    work = Path(workdir or tempfile.mkdtemp(prefix="toolchain-prof-"))
    work.mkdir(parents=True, exist_ok=True)
    session, optimized, context = _profiled_session(model_path, providers, threads, work, provider_options, reference)
    plain = (create_session(model_path, providers, threads=threads, provider_options=provider_options,
                            alternating=True) if reference else None)
    calls = {"profiled": lambda: session.run(None, feeds)}
    if plain is not None:
        calls["plain"] = lambda: plain.run(None, feeds)
    seconds = interleaved_samples(calls, warmup=warmup, runs=runs)  # every run is in the trace: skip the warm-up
    profiled_wall = [s * 1e6 for s in seconds["profiled"]]
    plain_wall = [s * 1e6 for s in seconds.get("plain", [])]
    trace = session.end_profiling()
    return NodeProfile(parse_trace(trace, skip_runs=warmup), runs, optimized, tuple(profiled_wall), tuple(plain_wall),
                       context)


def _profiled_session(model_path, providers, threads, work: Path, provider_options, reference: bool):
    """The profiled session and what it wrote: the optimized graph, else (a provider compiled subgraphs, so
    ORT cannot serialize the graph) the EP context model, else neither."""
    optimized = work / "optimized.onnx"
    # With a reference session, both sessions alternate run by run; thread-pool spinning is off in both, or
    # the idle one's spinning workers would slow the other on a machine with few cores.
    # The optimized copy keeps its large initializers in its own data file next to it: otherwise ORT writes
    # references to the input's external data file, relative to the scratch directory, where it is not (and
    # a model over 2 GB could not be written inline at all). Only its graph is read back.
    saved = {"session.optimized_model_external_initializers_file_name": optimized.name + ".data"}
    common = {"threads": threads, "profile_prefix": str(work / "trace"), "provider_options": provider_options,
              "alternating": reference}
    try:
        return (create_session(model_path, providers, optimized_model_path=str(optimized), session_config=saved,
                               **common), optimized, None)
    except ToolchainError as exc:
        if "compiled nodes" not in exc.message:
            raise
    context = work / "ep-context.onnx"
    config = {"ep.context_enable": "1", "ep.context_file_path": str(context), "ep.context_embed_mode": "0"}
    try:
        session = create_session(model_path, providers, session_config=config, **common)
        return session, None, context if context.is_file() else None
    except ToolchainError:
        return create_session(model_path, providers, **common), None, None
