"""Per-layer deltas of a comparison: each column's rows lined up against the first column's.

When every column is per module (models the tool exported) rows line up by module path. When any column
is per ONNX node (a model without the node-to-module map), or has a subgraph a provider compiled into one
kernel (its row covers many modules), they line up by ONNX node name: rows of any
column that share an ONNX node (a module row lists its nodes, a node row its own name and the nodes ORT
fused into it, a fused subgraph's row the nodes it covers) are joined into one group, and each column's
figures are the sums over its rows in the group. A group the first column has no row in is left out; a
column with no row in a group shows None there. A column whose time all went to fused subgraphs (OpenVINO
compiles a whole ResNet into one kernel) has no per-layer figure to line up: it shows None in every row and
the others line up among themselves, as if it were not there (the alignment text names it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolchain.formats.costs import MODULE, CostTable, LayerCost

BY_MODULE = "by module path (every column is per module, none has fused subgraphs)"
BY_NODE = ("by ONNX node name: rows sharing an ONNX node are joined into one group (a module row's nodes, a node "
           "row's own name, a fused subgraph's covered nodes) and each column's figures summed over the group")


OPAQUE_SHARE = 0.99  # a column with at least this share of its time in fused subgraphs has no per-layer split


def opaque(table: CostTable) -> bool:
    """Did (almost) all of ``table``'s time go to subgraphs a provider fused into single kernels?"""
    return bool(table.rows) and sum(r.share for r in table.rows if r.fused_by) >= OPAQUE_SHARE


def _split(tables: list[CostTable]) -> tuple[list[int], list[int]]:
    """Indices of the columns that line up, and of those left out as opaque (never the first column)."""
    left_out = [i for i, t in enumerate(tables) if i > 0 and opaque(t)]
    return [i for i in range(len(tables)) if i not in left_out], left_out


def alignment(tables: list[CostTable], names: list[str] | None = None) -> str:
    """How :func:`layer_deltas` lines rows up for these columns, in words (``names``: the columns' names,
    for the ones left out)."""
    kept, left_out = _split(tables)
    lined = [tables[i] for i in kept]
    per_module = all(t.granularity == MODULE and not any(r.fused_by for r in t.rows) for t in lined)
    text = BY_MODULE if per_module else BY_NODE
    if left_out:
        which = ", ".join(names[i] for i in left_out) if names else f"{len(left_out)} column(s)"
        text += (f"; {which}: the provider ran the whole graph as fused kernels, so there is no per-layer "
                 "figure to line up (shown as -)")
    return text


def layer_deltas(tables: dict[tuple[str, str], CostTable]) -> list[dict[str, Any]]:
    """Per layer (module or group of ONNX nodes), latency and energy of each column against the first, the
    first column's costliest first: ``{"module", "base_ms", "base_j", "columns": {"<model> @ <target>":
    {"ms", "j", "delta_ms", "delta_j"} or None}}``."""
    cols = list(tables)
    if len(cols) < 2:
        return []
    names = [f"{Path(m).name} @ {t}" for m, t in cols[1:]]
    all_tables = [tables[c] for c in cols]
    kept, _ = _split(all_tables)
    lined = [all_tables[i] for i in kept]
    grouped = _by_module(lined) if alignment(lined) == BY_MODULE else _by_node(lined)
    groups = []
    for label, some in grouped:  # back to one member list per column, [] for the columns left out
        members: list[list[LayerCost]] = [[] for _ in all_tables]
        for i, rows in zip(kept, some, strict=True):
            members[i] = rows
        groups.append((label, members))
    out = []
    for label, members in groups:
        base = members[0]
        if not base:
            continue
        b_ms, b_j = _sums(base)
        entry: dict[str, Any] = {"module": label, "base_ms": b_ms, "base_j": b_j, "columns": {}}
        for name, rows in zip(names, members[1:], strict=True):
            ms, j = _sums(rows)
            entry["columns"][name] = None if not rows else {"ms": ms, "j": j, "delta_ms": ms - b_ms, "delta_j": j - b_j}
        out.append(entry)
    out.sort(key=lambda e: e["base_j"], reverse=True)
    return out


def _sums(rows: list[LayerCost]) -> tuple[float, float]:
    return sum(r.latency_ms_mean for r in rows), sum(r.energy_j_mean for r in rows)


def _by_module(tables: list[CostTable]) -> list[tuple[str, list[list[LayerCost]]]]:
    maps = [t.by_module() for t in tables]
    return [(r.label, [[m[key]] if key in m else [] for m in maps]) for key, r in maps[0].items()]


def _by_node(tables: list[CostTable]) -> list[tuple[str, list[list[LayerCost]]]]:
    """Groups of rows (of all columns) connected through shared ONNX node names (union-find)."""
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, tuple[int, int]] = {}
    for c, table in enumerate(tables):
        for i, row in enumerate(table.rows):
            parent[(c, i)] = (c, i)
            for node in row.onnx_nodes or [row.module]:
                if node in owner:
                    parent[find((c, i))] = find(owner[node])
                else:
                    owner[node] = (c, i)
    groups: dict[tuple[int, int], list[list[LayerCost]]] = {}
    for c, table in enumerate(tables):
        for i, row in enumerate(table.rows):
            groups.setdefault(find((c, i)), [[] for _ in tables])[c].append(row)
    out = []
    for members in groups.values():
        base = sorted(members[0], key=lambda r: r.energy_j_mean, reverse=True)
        label = base[0].label if base else ""
        if len(base) > 1:
            label += f" (+{len(base) - 1} more row{'s' if len(base) > 2 else ''} sharing ONNX nodes)"
        out.append((label, members))
    return out
