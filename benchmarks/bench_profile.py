"""Profiling benchmark: how far to trust the per-layer cost tables.

1. Profiler overhead: per-call latency of a profiled session against an unprofiled one, alternated run by
   run (thread-pool spinning off in both so neither slows the other), medians.
2. Per-layer attribution against timing each layer alone (ResNet-50 layout): every module's ONNX nodes are
   cut out of the graph (onnx.utils.Extractor), run alone on inputs of their real shapes, and timed; the
   profiled per-layer latency is compared with that, layer by layer, and in sum with the end-to-end latency.
3. Run-to-run coefficient of variation of joules per inference: the whole measurement (idle baseline,
   warm-up, windows) repeated in fresh sessions, on the target's meter, or the estimate when the target's
   meter cannot be read here (labelled `estimated` in the table and the JSON).

Prints tables and writes benchmarks/results/profile.json.
Usage: python benchmarks/bench_profile.py [--models resnet-18,resnet-50,mobilenet-v2] [--meter estimate]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def export(name: str, tmp: Path) -> Path:
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model

    path = tmp / f"{name}.onnx"
    export_model(load_model(name), path, ExportOptions(parity=False))
    return path


def overhead(path: Path, feeds, runs: int) -> dict:
    from toolchain.profile.trace import profile_nodes

    prof = profile_nodes(path, feeds, runs=runs, warmup=3, reference=True)
    profiled = statistics.median(prof.profiled_wall_us) / 1000
    plain = statistics.median(prof.plain_wall_us) / 1000
    per_run = [sum(n.per_run_us[i] for n in prof.nodes) for i in range(prof.runs)]
    return {"profiled_ms": profiled, "plain_ms": plain, "overhead_pct": 100 * (profiled - plain) / plain,
            "kernels_ms": statistics.median(per_run) / 1000, "kernels": len(prof.nodes), "runs": runs}


def layers_alone(path: Path, feeds, runs: int) -> dict:
    """Profiled per-layer latency against each layer's nodes run alone, for every module with kernels."""
    import onnx
    from onnx.utils import Extractor

    from toolchain.profile.attribution import attribute, with_input_shapes
    from toolchain.profile.trace import profile_nodes
    from toolchain.runtime.session import create_session

    prof = profile_nodes(path, feeds, runs=runs, warmup=3, reference=True)
    rows, _ = attribute(path, prof, feeds, (0.0, 0.0))
    model = onnx.load(str(path))
    inferred = with_input_shapes(model, feeds)
    shapes = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
              + list(inferred.graph.output)}
    inits = {i.name for i in model.graph.initializer}
    produced_by, consumers = {}, {}
    for node in model.graph.node:
        for o in node.output:
            produced_by[o] = node.name
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    graph_outputs = {o.name for o in model.graph.output}
    extractor = Extractor(inferred)
    out = []
    for row in rows:
        names = set(row.onnx_nodes)
        nodes = [n for n in model.graph.node if n.name in names and n.op_type != "Constant"]
        if not nodes:
            continue
        ins = sorted({i for n in nodes for i in n.input if i and i not in inits and produced_by.get(i) not in names
                      and not _is_constant(model, produced_by.get(i))})
        outs = sorted({o for n in nodes for o in n.output
                       if o in graph_outputs or any(c not in names for c in consumers.get(o, []))})
        if not ins or not outs or any(i not in shapes for i in ins):
            continue
        try:
            sub = extractor.extract_model(ins, outs)
            session = create_session(sub.SerializeToString())
        except Exception as exc:  # noqa: BLE001 - a layer that cannot stand alone is reported, not fatal
            print(f"  {row.module}: cannot run alone ({type(exc).__name__})", file=sys.stderr)
            continue
        sub_feeds = {i: _random_like(shapes[i]) for i in ins}
        for _ in range(3):
            session.run(None, sub_feeds)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, sub_feeds)
            times.append(time.perf_counter() - t)
        out.append({"module": row.module, "ops": row.op_types, "profiled_ms": row.latency_ms_mean,
                    "alone_ms": statistics.median(times) * 1000})
    profiled = np.array([r["profiled_ms"] for r in out])
    alone = np.array([r["alone_ms"] for r in out])
    e2e = statistics.median(prof.plain_wall_us) / 1000
    ratio = alone / profiled
    return {"layers": out, "layers_timed": len(out), "modules_with_kernels": len(rows),
            "correlation": float(np.corrcoef(profiled, alone)[0, 1]) if len(out) > 2 else None,
            "median_ratio_alone_to_profiled": float(np.median(ratio)),
            "p10_ratio": float(np.percentile(ratio, 10)), "p90_ratio": float(np.percentile(ratio, 90)),
            "sum_profiled_ms": float(profiled.sum()), "sum_alone_ms": float(alone.sum()), "end_to_end_ms": e2e,
            "profiled_share_of_e2e": float(profiled.sum() / e2e), "alone_share_of_e2e": float(alone.sum() / e2e)}


def _is_constant(model, node_name) -> bool:
    return any(n.name == node_name and n.op_type == "Constant" for n in model.graph.node) if node_name else False


def _random_like(vi):
    import onnx

    t = vi.type.tensor_type
    dims = [d.dim_value for d in t.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
    return np.random.default_rng(0).standard_normal(dims).astype(dtype)


def energy_cv(path: Path, feeds, meter_name: str, trials: int, repeats: int, window_s: float) -> dict:
    from toolchain.core.stats import Summary
    from toolchain.energy import open_meter
    from toolchain.profile.measure import measure
    from toolchain.runtime.session import create_session

    per_trial = []
    kinds = set()
    for _ in range(trials):
        meter = open_meter(meter_name)
        session = create_session(path)
        try:
            m = measure({"m": lambda s=session: s.run(None, feeds)}, meter, repeats=repeats, window_s=window_s,
                        warmup=3, idle_s=1.0)["m"]
        finally:
            meter.close()
        del session
        kinds.add(m.kind)
        per_trial.append({"joules": m.joules.mean, "within_cv_pct": m.joules.cv_pct, "latency_ms": m.latency.median})
    across = Summary.of([t["joules"] for t in per_trial])
    return {"meter": meter_name, "kind": "/".join(sorted(kinds)), "trials": per_trial, "repeats": repeats,
            "window_s": window_s, "joules_mean": across.mean, "run_to_run_cv_pct": across.cv_pct,
            "within_run_cv_pct_median": statistics.median(t["within_cv_pct"] for t in per_trial)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet-18,resnet-50,mobilenet-v2")
    parser.add_argument("--alone-model", default="resnet-50", help="model for the layer-alone comparison")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--meter", help="power meter (default: RAPL if readable here, else the labelled estimate)")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from toolchain.energy import rapl
    from toolchain.profile.run import ProfileOptions, make_feeds

    meter = args.meter or ("rapl" if rapl.probe().readable else "estimate")
    console = Console(width=150)
    results = {"meter": meter, "runs": args.runs, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        names = args.models.split(",")
        if args.alone_model not in names:
            names.append(args.alone_model)
        for name in names:
            path = export(name, Path(tmp))
            feeds, _ = make_feeds(path, ProfileOptions())
            entry = {"overhead": overhead(path, feeds, args.runs),
                     "energy": energy_cv(path, feeds, meter, args.trials, repeats=5, window_s=1.0)}
            if name == args.alone_model:
                entry["alone"] = layers_alone(path, feeds, args.runs)
            results["models"][name] = entry
            print(f"done {name}", file=sys.stderr)

    t = Table(title=f"profiler overhead and J/inference stability (batch 1, CPU EP; medians of {args.runs} runs)")
    for col in ("model", "plain ms", "profiled ms", "overhead", "kernels ms", "J/inference", "energy",
                "CV run-to-run", "CV within run"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, e in results["models"].items():
        o, en = e["overhead"], e["energy"]
        t.add_row(name, f"{o['plain_ms']:.2f}", f"{o['profiled_ms']:.2f}", f"{o['overhead_pct']:+.1f}%",
                  f"{o['kernels_ms']:.2f}", f"{en['joules_mean']:.4g}", f"{en['kind']} ({en['meter']})",
                  f"{en['run_to_run_cv_pct']:.1f}%", f"{en['within_run_cv_pct_median']:.1f}%")
    console.print(t)
    alone = results["models"][args.alone_model]["alone"]
    console.print(f"{args.alone_model}: {alone['layers_timed']} of {alone['modules_with_kernels']} layers timed alone; "
                  f"alone/profiled median {alone['median_ratio_alone_to_profiled']:.2f} "
                  f"(p10 {alone['p10_ratio']:.2f}, p90 {alone['p90_ratio']:.2f}), correlation {alone['correlation']:.3f}; "
                  f"sum profiled {alone['sum_profiled_ms']:.2f} ms = {alone['profiled_share_of_e2e']:.1%} of end to end "
                  f"{alone['end_to_end_ms']:.2f} ms; sum alone {alone['sum_alone_ms']:.2f} ms = "
                  f"{alone['alone_share_of_e2e']:.1%}")
    out = Path(__file__).parent / "results" / "profile.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
