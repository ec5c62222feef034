"""How a node says which targets it offers: one Ray custom resource per target, ``toolchain-target:NAME``,
one unit each. A job asks for the whole unit, so one node measures one job of a target at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PREFIX = "toolchain-target:"


def resource_for(target_name: str) -> str:
    """The Ray resource that says a node offers ``target_name``."""
    return PREFIX + target_name


def targets_in(resources: Mapping[str, Any]) -> list[str]:
    """The target names a node's resources offer, sorted."""
    return sorted(key[len(PREFIX):] for key in resources if key.startswith(PREFIX))


@dataclass(frozen=True)
class NodeRecord:
    """A live node of the cluster as the driver sees it (from ``ray.nodes()``)."""

    node_id: str
    address: str
    hostname: str
    targets: tuple[str, ...]
    is_head: bool = False
    resources: dict[str, float] = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        """``hostname (address, node 1a2b3c4d)``: how progress and errors name a node."""
        return f"{self.hostname} ({self.address}, node {self.node_id[:8]})"

    @classmethod
    def from_ray(cls, entry: Mapping[str, Any]) -> NodeRecord:
        resources = dict(entry.get("Resources") or {})
        return cls(node_id=str(entry["NodeID"]), address=str(entry.get("NodeManagerAddress", "")),
                   hostname=str(entry.get("NodeManagerHostname", "")), targets=tuple(targets_in(resources)),
                   is_head="node:__internal_head__" in resources, resources=resources)


def live_nodes(entries: list[Mapping[str, Any]]) -> list[NodeRecord]:
    """The alive nodes of ``ray.nodes()``: worker nodes in the order Ray lists them, the head last (it also
    runs the cluster's own services, so a job goes there only when no worker offers its target)."""
    nodes = [NodeRecord.from_ray(e) for e in entries if e.get("Alive")]
    return sorted(nodes, key=lambda n: n.is_head)


def offered(nodes: list[NodeRecord]) -> dict[str, list[NodeRecord]]:
    """Target name -> the nodes that offer it."""
    out: dict[str, list[NodeRecord]] = {}
    for node in nodes:
        for name in node.targets:
            out.setdefault(name, []).append(node)
    return dict(sorted(out.items()))


def describe_offered(nodes: list[NodeRecord]) -> str:
    """``x86-cpu (2 nodes), openvino-cpu (1 node)``, or ``none`` for a cluster that offers no target."""
    parts = [f"{name} ({len(ns)} node{'s' if len(ns) != 1 else ''})" for name, ns in offered(nodes).items()]
    return ", ".join(parts) or "none"
