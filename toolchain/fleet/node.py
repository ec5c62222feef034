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
    mode: str = "compare"  # "profile": one model, profile_model; "compare": compare_models
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


def run_job(spec: JobSpec, models: dict[str, dict[str, bytes]]) -> dict[str, Any]:
    """Measure every model (display path -> {file name: bytes}, the ONNX file first, then the external data
    files it references; from Ray's object store) on the target of ``spec`` here; ``{"node": node_info(),
    "tables": {display path: cost-table dict}}``. A problem with the job (the target not usable on this node, no readable meter, a
    model the runtime refuses) raises :class:`ToolchainError`, which the driver reports for that target."""
    from toolchain.profile.run import compare_models, profile_model
    from toolchain.targets.target import load_target_file

    info = node_info()
    with tempfile.TemporaryDirectory(prefix="toolchain-fleet-") as work:
        root = Path(work)
        toml = root / f"{spec.target_name}.toml"
        toml.write_text(spec.target_toml)
        target = load_target_file(toml)
        paths = _write_models(models, root)
        options = spec.options
        if spec.data_file is not None:
            name, data = spec.data_file
            (root / "data").mkdir()
            local = root / "data" / Path(name).name
            local.write_bytes(data)
            options = replace(options, data=str(local))
        if spec.mode == "profile":
            (display, path), = paths.items()
            tables = {display: profile_model(path, target, options)}
        else:
            result = compare_models(list(paths.values()), [target], options)
            by_path = {str(p): d for d, p in paths.items()}
            tables = {by_path[str(m)]: t for (m, _), t in result.tables.items()}
        out = {}
        for display, table in tables.items():
            data = table.to_dict()
            data["model"]["path"] = display
            data["host"] = {**data.get("host", {}), **info}
            out[display] = data
    return {"node": info, "tables": out}
