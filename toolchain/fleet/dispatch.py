"""The driver: run (model, target) jobs on the nodes of a Ray cluster that offer each target.

One job per target holds every model. The ONNX files go into Ray's object store once and every job reads
them from there. A job is a :class:`~toolchain.fleet.node.NodeJob` actor on one node (node affinity, never
soft; worker nodes before the head) that asks for the node's whole unit of the target's resource, so a node
measures one job of a target at a time. Jobs whose nodes share a host are measured together, their windows
interleaved across the nodes (job A's window 1, job B's window 1, A's window 2, ...; never two at once, which
would slow each other): drift hits them alike, as in one local comparison. Jobs on different hosts run at
the same time. A job whose node is lost (the node died, its worker crashed, an object went away) is retried
once on another node that offers the target; when there is none, or the retry is lost too, the target is
reported lost and every other result is kept. A job that fails for its own reasons (the target not usable
on that node, no readable meter) is reported failed, not retried: it would fail again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError, one_line
from toolchain.fleet.node import JobSpec, NodeJob
from toolchain.fleet.resources import NodeRecord, describe_offered, live_nodes, offered, resource_for

RETRIES = 1  # a lost job is retried once on another node that offers its target


@dataclass
class Attempt:
    """One try of a target's job on one node: ``ok``, ``lost`` (the node or its worker went away) or
    ``failed`` (the job's own error), with the reason and how long it took."""

    node: str
    node_id: str
    outcome: str
    seconds: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "node_id": self.node_id, "outcome": self.outcome,
                "seconds": round(self.seconds, 3), "reason": self.reason}


@dataclass
class FleetResult:
    """What came back: cost-table dicts per (model display path, target name), the node that measured each
    target (its :func:`toolchain.fleet.node.node_info`), every attempt, and the targets lost or failed."""

    address: str
    nodes: list[NodeRecord]
    tables: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    measured_on: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: dict[str, list[Attempt]] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def cluster_dict(self) -> dict[str, Any]:
        return {"address": self.address,
                "nodes": [{"node_id": n.node_id, "address": n.address, "hostname": n.hostname,
                           "targets": list(n.targets), "head": n.is_head} for n in self.nodes],
                "measured_on": self.measured_on,
                "attempts": {t: [a.to_dict() for a in tries] for t, tries in self.attempts.items()},
                "lost": [{"target": t, "reason": r} for t, r in self.lost.items()],
                "failed": [{"target": t, "reason": r} for t, r in self.failed.items()]}


def connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` as a driver (no-op when this process already is one); True when
    this call connected (the caller then disconnects with :func:`disconnect`)."""
    try:
        import ray
    except ImportError:
        raise ToolchainError("Ray is not installed here", hint="pip install 'toolchain[fleet]'") from None
    if ray.is_initialized():
        return False
    _check_reachable(address)
    import os

    from toolchain.core.fsio import captured_output

    # Ray's C++ core logs warnings to stderr as it connects (e.g. that a machine without internet has no
    # "external" IP): kept off the terminal (shown at -vv), so a one-line error stays one line
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        with captured_output():
            ray.init(address=address, namespace="toolchain", logging_level=logging.ERROR, log_to_driver=False,
                     configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ToolchainError(f"cannot join the Ray cluster at {address}: {one_line(exc)}",
                             hint="start its head with `toolchain worker --head` (or `ray start --head`) and "
                                  "pass the address it prints") from None
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One line when nothing answers at ``address`` (HOST:PORT): Ray's own client would wait for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ToolchainError(f"--cluster {address!r}: expected HOST:PORT, the address the head printed "
                             "(e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ToolchainError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                             hint="start its head with `toolchain worker --head` (or `ray start --head`), "
                                  "and check the address and that the port is open") from None


def disconnect() -> None:
    import ray

    ray.shutdown()


def cluster_nodes() -> list[NodeRecord]:
    import ray

    return live_nodes(ray.nodes())


def model_files(path: str | Path) -> dict[str, bytes]:
    """An ONNX file and the external data files it references, name -> bytes, the ONNX file first."""
    from toolchain.core.onnxfile import external_data_files, load_graph

    path = Path(path)
    load_graph(path)  # one clear line for a missing, corrupt or incomplete model, before anything ships
    files = {path.name: path.read_bytes()}
    for name in external_data_files(path):
        files[name] = (path.parent / name).read_bytes()
    return files


def _target_toml(target) -> str:
    if target.path is None:
        raise ToolchainError(f"target {target.name!r} has no TOML file to ship to the cluster's nodes")
    return Path(target.path).read_text()


def _data_file(options) -> tuple[str, bytes] | None:
    """The local data file ``options.data`` names, to ship with each job (a ``builtin:`` set or synthetic
    inputs ship nothing); a folder is refused."""
    spec = options.data
    if not spec or spec.startswith("builtin:") or spec == "random":
        return None
    p = Path(spec)
    if p.is_dir():
        raise ToolchainError(f"--data {spec}: a folder is not shipped to the cluster's nodes",
                             hint="pack the inputs into an .npz file (or use a builtin: set)")
    if not p.is_file():
        raise ToolchainError(f"--data {spec}: no such file")
    return p.name, p.read_bytes()


def check_offered(targets, nodes: list[NodeRecord], address: str) -> None:
    """One line naming the targets no live node offers, and what the cluster has."""
    have = offered(nodes)
    missing = [t.name for t in targets if t.name not in have]
    if missing:
        raise ToolchainError(
            f"no node of the cluster at {address} offers target{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; the cluster offers: {describe_offered(nodes)}",
            hint=f"start a node with `toolchain worker --target {missing[0]} --address {address}`")


def _candidates(target_name: str, tried: set[str]) -> list[NodeRecord]:
    """Live nodes offering the target that were not tried yet: worker nodes first, the head last."""
    return [n for n in offered(cluster_nodes()).get(target_name, []) if n.node_id not in tried]


class _Job:
    """A target's job as the driver tracks it: where it was tried, each attempt, and what came back."""

    def __init__(self, target, spec: JobSpec, models_ref, first: NodeRecord):
        self.target, self.spec, self.models_ref, self.first = target, spec, models_ref, first
        self.tried: set[str] = set()
        self.tries: list[Attempt] = []
        self.out: dict | None = None


class _Live:
    """One attempt in flight: the job's :class:`~toolchain.fleet.node.NodeJob` actor on ``node``."""

    def __init__(self, job: _Job, node: NodeRecord, actor):
        self.job, self.node, self.actor, self.start = job, node, actor, time.monotonic()


# Ray's system errors, in words (their messages run to several lines of advice)
_LOST = {"NodeDiedError": "the node died mid-job", "WorkerCrashedError": "its worker process died mid-job",
         "ActorDiedError": "the node or its worker died mid-job", "ActorUnavailableError": "the node went away",
         "ActorUnschedulableError": "the node is gone", "TaskUnschedulableError": "the node is gone",
         "ObjectLostError": "a model file's object was lost", "OutOfMemoryError": "the node ran out of memory",
         "LocalRayletDiedError": "this driver's raylet died"}


def _lost_reason(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in _LOST:
            return f"{_LOST[cls.__name__]} ({cls.__name__})"
    return one_line(exc)


def _start(job: _Job, node: NodeRecord, progress, on_start) -> _Live:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    job.tried.add(node.node_id)
    if progress:
        progress(f"{job.target.name}: job on {node.label}" + (" (retry)" if job.tries else ""))
    actor = ray.remote(NodeJob).options(
        num_cpus=0, max_restarts=0, max_task_retries=0, resources={resource_for(job.target.name): 1},
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote(job.spec, job.models_ref)
    if on_start:
        on_start(job.target.name, node)
    return _Live(job, node, actor)


def _call(live: _Live, method: str, *args, timeout_s: float | None = None):
    """``live``'s actor's ``method``; on a failure the attempt is recorded (failed: the job's own error;
    lost: the node, its worker or an object went away), the actor let go, and None returned."""
    import ray

    try:
        return True, ray.get(getattr(live.actor, method).remote(*args), timeout=timeout_s)
    except ray.exceptions.RayTaskError as exc:  # the job's own error, raised on the node
        cause = getattr(exc, "cause", None) or exc
        outcome, reason = "failed", (cause.message if isinstance(cause, ToolchainError) else one_line(cause))
    except ray.exceptions.GetTimeoutError:
        outcome, reason = "lost", f"no answer within {timeout_s:g} s"
    except ray.exceptions.RayError as exc:
        outcome, reason = "lost", _lost_reason(exc)
    live.job.tries.append(Attempt(live.node.label, live.node.node_id, outcome, time.monotonic() - live.start, reason))
    _let_go(live)
    return False, None


def _let_go(live: _Live) -> None:
    import ray

    try:
        ray.kill(live.actor)
    except Exception:  # noqa: BLE001 - an actor on a dead node is gone already
        pass


def _interleave(lives: list[_Live], progress, timeout_s: float | None) -> None:
    """Every attempt of ``lives`` (nodes of one host): each prepared in turn, then window 1 of each, window 2
    of each, ..., then each finished; an attempt that fails drops out, the others go on."""
    counts = []
    for live in list(lives):
        ok, n = _call(live, "prepare", timeout_s=timeout_s)
        if ok:
            counts.append(n)
        else:
            lives.remove(live)
    for r in range(max(counts, default=0)):
        if progress and lives:
            progress(f"window {r + 1}/{max(counts)}: " + ", ".join(live.job.target.name for live in lives))
        for live in list(lives):
            if not _call(live, "window", r, timeout_s=timeout_s)[0]:
                lives.remove(live)
    for live in list(lives):
        if progress:
            progress(f"{live.job.target.name}: per-layer profile on {live.node.label}")
        ok, out = _call(live, "finish", timeout_s=timeout_s)
        if ok:
            live.job.tries.append(Attempt(live.node.label, live.node.node_id, "ok", time.monotonic() - live.start))
            live.job.out = out
            _let_go(live)


def _serve(jobs: list[_Job], progress, on_start, timeout_s: float | None) -> None:
    """The jobs of one host: all at once with their windows interleaved, then the lost ones once more on
    other nodes that offer their targets."""
    pending = [(job, job.first) for job in jobs]
    while pending:
        round_jobs = [job for job, _ in pending]
        _interleave([_start(job, node, progress, on_start) for job, node in pending], progress, timeout_s)
        pending = []
        for job in round_jobs:
            last = job.tries[-1] if job.tries else None
            if job.out is not None or last is None or last.outcome != "lost" or len(job.tries) > RETRIES:
                continue
            others = _candidates(job.target.name, job.tried)
            if progress:
                progress(f"{job.target.name}: node {last.node} lost ({last.reason})"
                         + (f"; retrying on {others[0].label}" if others else "; no other node offers it"))
            if others:
                pending.append((job, others[0]))


def _record(job: _Job, result: FleetResult) -> None:
    name, tries = job.target.name, job.tries
    result.attempts[name] = tries
    if job.out is not None:
        result.measured_on[name] = job.out["node"]
        for display, table in job.out["tables"].items():
            table["target"]["path"] = str(job.target.path)
            table["fleet"] = {"attempts": [a.to_dict() for a in tries]}
            result.tables[(display, name)] = table
    elif tries and tries[-1].outcome == "failed":
        result.failed[name] = f"on {tries[-1].node}: {tries[-1].reason}"
    else:
        lost = "; ".join(f"{a.node}: {a.reason}" for a in tries)
        more = "" if len(tries) > RETRIES else " and no other node offers it"
        result.lost[name] = f"lost{more} ({lost})"


def run_on_cluster(address: str, models: list[str | Path], targets: list, options, *,
                   progress: Callable[[str], None] | None = None,
                   on_start: Callable[[str, NodeRecord], None] | None = None,
                   timeout_s: float | None = None) -> FleetResult:
    """Measure ``models`` on each of ``targets`` on the cluster at ``address`` (see the module's text).
    ``on_start(target_name, node)`` is called as each attempt is submitted (tests kill nodes from it)."""
    import ray

    joined = connect(address)
    try:
        nodes = cluster_nodes()
        check_offered(targets, nodes, address)
        if len({t.name for t in targets}) != len(targets):
            raise ToolchainError("the same target is given twice")
        displays = [str(m) for m in models]
        files = {d: model_files(d) for d in displays}
        models_ref = ray.put(files)  # once: every job reads the files from the object store
        data = _data_file(options)
        result = FleetResult(address=address, nodes=nodes)
        by_host: dict[str, list[_Job]] = {}
        for target in targets:
            spec = JobSpec(target.name, _target_toml(target), options, data_file=data)
            first = _candidates(target.name, set())[0]
            by_host.setdefault(first.hostname, []).append(_Job(target, spec, models_ref, first))
        def serve(jobs: list[_Job]) -> None:
            try:
                _serve(jobs, progress, on_start, timeout_s)
            except Exception as exc:  # noqa: BLE001 - one host's surprise must not lose the others
                for job in jobs:
                    if job.out is None:
                        job.tries.append(Attempt(job.first.label, job.first.node_id, "failed", 0.0, one_line(exc)))

        threads = [threading.Thread(target=serve, args=(jobs,), daemon=True) for jobs in by_host.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for target in targets:
            _record(next(j for js in by_host.values() for j in js if j.target is target), result)
        return result
    finally:
        if joined:
            disconnect()
