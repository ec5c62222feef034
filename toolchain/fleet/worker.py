"""A node that offers targets: the ``ray start`` line ``toolchain worker`` runs (and prints, so it can be run
by hand or put in a service unit), after checking that every target it offers is usable on this machine."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from toolchain.core.errors import ToolchainError
from toolchain.fleet.resources import resource_for

DEFAULT_PORT = 6379


@dataclass
class NodeOptions:
    """How to start a node: its targets, the head's ``address`` (or ``head`` for a new cluster on ``port``),
    and Ray's own settings passed through."""

    targets: tuple[str, ...] = ()
    address: str | None = None
    head: bool = False
    port: int = DEFAULT_PORT
    node_ip_address: str | None = None
    num_cpus: int | None = None
    object_store_mb: int | None = None
    temp_dir: str | None = None
    block: bool = False
    ray_options: tuple[str, ...] = ()  # more of `ray start`'s own options, as KEY=VALUE (no leading dashes)

    def __post_init__(self) -> None:
        if self.head == bool(self.address):
            raise ToolchainError("give either --address HEAD_ADDRESS (join a cluster) or --head (start one)")
        if not self.head and not self.targets:
            raise ToolchainError("a worker node offers at least one target: --target NAME",
                                 hint="`toolchain targets` lists them and whether each is usable here")
        for item in self.ray_options:
            key = item.split("=", 1)[0]
            if not key or key.startswith("-") or not all(c.isalnum() or c == "-" for c in key):
                raise ToolchainError(f"--ray-option {item!r}: expected KEY=VALUE with one of `ray start`'s "
                                     "option names, without the dashes (e.g. node-manager-port=6380)")


def ray_executable() -> str:
    """The ``ray`` command of this Python environment (every node must run the same Ray version)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ray")
    if not found:
        raise ToolchainError("Ray is not installed here", hint="pip install 'toolchain[fleet]'")
    return found


def check_targets_here(names: tuple[str, ...]) -> list:
    """Load each target and check it is usable on this machine (one line naming why not, and the fix)."""
    from toolchain.targets.host import usable
    from toolchain.targets.target import load_target

    targets = []
    for name in names:
        target = load_target(name)
        ok, reason = usable(target)
        if not ok:
            raise ToolchainError(f"target {target.name!r} is not usable on this node: {reason}",
                                 hint="`toolchain targets` lists the targets and why each is or is not usable")
        targets.append(target)
    return targets


def start_command(options: NodeOptions, target_names: list[str]) -> list[str]:
    """The ``ray start`` argument list for ``options`` (the targets as custom resources, one unit each)."""
    cmd = [ray_executable(), "start"]
    if options.head:
        cmd += ["--head", f"--port={options.port}", "--include-dashboard=false"]
    else:
        cmd += [f"--address={options.address}"]
    if target_names:
        cmd += ["--resources=" + json.dumps({resource_for(n): 1 for n in target_names}, separators=(",", ":"))]
    if options.node_ip_address:
        cmd += [f"--node-ip-address={options.node_ip_address}"]
    if options.num_cpus is not None:
        cmd += [f"--num-cpus={options.num_cpus}"]
    if options.object_store_mb is not None:
        cmd += [f"--object-store-memory={options.object_store_mb * 1024 * 1024}"]
    if options.temp_dir:
        cmd += [f"--temp-dir={options.temp_dir}"]
    cmd += [f"--{item}" for item in options.ray_options]
    cmd += ["--disable-usage-stats"]
    if options.block:
        cmd += ["--block"]
    return cmd


def command_line(cmd: list[str]) -> str:
    return shlex.join(cmd)
