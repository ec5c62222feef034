"""From what the cluster sent back to what ``profile`` and ``compare`` print and write: cost tables (with
the node each was measured on), a :class:`~toolchain.profile.run.Comparison`, and one line of provenance
per node."""

from __future__ import annotations

from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.core.host import describe_machine
from toolchain.fleet.dispatch import FleetResult


def tables_of(result: FleetResult) -> dict[tuple[str, str], Any]:
    """(model, target) -> :class:`~toolchain.formats.costs.CostTable` of every job that came back, each
    checked as a table read from disk would be (its ``host`` names the node it was measured on)."""
    from toolchain.formats.costs import CostTable

    out = {}
    for (model, target), data in result.tables.items():
        out[(model, target)] = CostTable.from_dict(data, f"{model} @ {target} from the cluster")
    return out


def comparison_of(result: FleetResult):
    """A :class:`~toolchain.profile.run.Comparison` of what came back; lost and failed targets are its
    skipped ones, with why. None came back: one line naming each target's fate."""
    from toolchain.profile.run import Comparison

    tables = tables_of(result)
    skipped = {**{t: f"lost: {r}" for t, r in result.lost.items()},
               **{t: f"failed: {r}" for t, r in result.failed.items()}}
    if not tables:
        raise ToolchainError("no target's job came back from the cluster: "
                             + "; ".join(f"{t}: {r}" for t, r in skipped.items()))
    return Comparison(tables, skipped)


def annotate(data_out: dict[str, Any], result: FleetResult) -> dict[str, Any]:
    """``compare --json``'s document with the cluster's part: each column's node and attempts, and the
    cluster (address, nodes, attempts, lost and failed targets)."""
    for column in data_out.get("columns", []):
        column["node"] = column.get("host")
        column["node_line"] = describe_machine(column.get("host"))
        column["attempts"] = [a.to_dict() for a in result.attempts.get(column["target"], [])]
    data_out["cluster"] = result.cluster_dict()
    return data_out
