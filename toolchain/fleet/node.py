"""What runs on a node: who the node is (:func:`node_info`) and one job (:func:`run_job`): the job's ONNX
files written to a scratch folder, its target loaded from the TOML text the driver shipped, every model
measured on that target here (interleaved, as ``toolchain compare`` does locally), and the cost tables
returned as plain dicts beside the node's provenance. The node's own onnxruntime build, meter and CPU are
what the figures come from; nothing here imports torch."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from toolchain.core.errors import ToolchainError


@dataclass
class JobSpec:
    """One target's job: the target (its name and TOML text), how to measure, and the data file the
    inputs come from when the user gave a local one (its name and bytes; ``options.data`` names it)."""

    target_name: str
    target_toml: str
    options: Any  # toolchain.profile.run.ProfileOptions
    data_file: tuple[str, bytes] | None = None


def node_info() -> dict[str, Any]:
    """This node's provenance: host name, CPU model and the flags that matter, GPU model, onnxruntime build
    (distribution, version, providers), Python, toolchain and Ray versions, and its Ray node id and address
    when it runs inside a Ray worker."""
    from toolchain.core.host import machine_info

    info: dict[str, Any] = {**machine_info(), "toolchain": _version("toolchain"), "ray": _version("ray"),
                            "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            info["node_id"] = ray.get_runtime_context().get_node_id()
            info["address"] = ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover - a node always has Ray
        pass
    return info


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _write_models(models: dict[str, dict[str, bytes]], root: Path) -> dict[str, Path]:
    """Each model's files under ``root/<n>/`` (the names as the driver sent them, no folders); display
    path -> the ONNX file written."""
    paths = {}
    for i, (display, files) in enumerate(models.items(), 1):
        folder = root / str(i)
        folder.mkdir()
        for name, data in files.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise ToolchainError(f"{display}: refusing a shipped file name with a folder in it: {name!r}")
            (folder / name).write_bytes(data)
        paths[display] = folder / next(iter(files))
    return paths


class NodeJob:
    """One target's job on this node, in steps (a Ray actor on a cluster; a plain object in :func:`run_job`):
    :meth:`prepare` writes the shipped files, loads the target, opens its meter and the sessions (thread-pool
    spinning off), takes the idle baseline and warms up; :meth:`window` measures one window of every model;
    :meth:`finish` profiles each model per layer and returns ``{"node": node_info(), "tables": {display path:
    cost-table dict}}``. The driver calls :meth:`window` of several jobs in turn when their nodes share a
    host, so their windows interleave as one local comparison's do. Nothing heavy happens in ``__init__``: a
    problem with the job (the target not usable on this node, no readable meter, a model the runtime refuses)
    is a :class:`ToolchainError` from :meth:`prepare`, which the driver reports for that target."""

    def __init__(self, spec: JobSpec, models: dict[str, dict[str, bytes]]):
        self.spec, self.models = spec, models
        self.work: tempfile.TemporaryDirectory | None = None
        self.run = self.meter = None
        self.sessions: dict = {}

    def prepare(self) -> int:
        """Everything before the windows; returns how many windows :meth:`window` is to be called for."""
        from toolchain.profile.measure import Interleaved
        from toolchain.profile.run import check_model, check_usable, make_feeds, session_for, target_meter
        from toolchain.targets.target import load_target_file

        self.info = node_info()
        self.work = tempfile.TemporaryDirectory(prefix="toolchain-fleet-")
        root = Path(self.work.name)
        toml = root / f"{self.spec.target_name}.toml"
        toml.write_text(self.spec.target_toml)
        self.target = target = load_target_file(toml)
        self.paths = _write_models(self.models, root)
        self.models = {}
        options = self.spec.options
        if self.spec.data_file is not None:
            name, data = self.spec.data_file
            (root / "data").mkdir()
            local = root / "data" / Path(name).name
            local.write_bytes(data)
            options = replace(options, data=str(local))
        self.options = options
        for path in self.paths.values():
            check_model(path)
        check_usable(target)
        self.feeds, self.sources = {}, {}
        for display, path in self.paths.items():
            self.feeds[display], self.sources[display] = make_feeds(path, options)
        self.meter = target_meter(target, options)
        for display, path in self.paths.items():
            self.sessions[display] = session_for(path, target, options.threads, alternating=True)
        candidates = {f"{d} @ {target.name}": (lambda s=s, f=self.feeds[d]: s.run(None, f))
                      for d, s in self.sessions.items()}
        self.run = Interleaved(candidates, self.meter, repeats=options.repeats, window_s=options.window_s,
                               warmup=options.warmup, batch=options.batch,
                               idle_s=target.idle_seconds if options.idle_s is None else options.idle_s)
        self.run.prepare()
        return options.repeats

    def window(self, r: int) -> None:
        self.run.window(r)

    def finish(self) -> dict[str, Any]:
        from toolchain.profile.run import build_table

        try:
            measured = self.run.results()
        finally:
            self.meter.close()
            self.sessions.clear()  # an idle session's spinning pool would slow the profiled runs
        out = {}
        try:
            for display, path in self.paths.items():
                with tempfile.TemporaryDirectory(prefix="toolchain-prof-") as scratch:
                    table = build_table(path, self.target, measured[f"{display} @ {self.target.name}"],
                                        self.feeds[display], self.sources[display], self.options, scratch)
                data = table.to_dict()
                data["model"]["path"] = display
                data["host"] = {**data.get("host", {}), **self.info}
                out[display] = data
        finally:
            self.close()
        return {"node": self.info, "tables": out}

    def close(self) -> None:
        if self.work is not None:
            self.work.cleanup()
            self.work = None


def run_job(spec: JobSpec, models: dict[str, dict[str, bytes]]) -> dict[str, Any]:
    """The whole :class:`NodeJob` here, in one call."""
    job = NodeJob(spec, models)
    try:
        for r in range(job.prepare()):
            job.window(r)
        return job.finish()
    finally:
        job.close()
