"""Export benchmark: parity, node-to-module coverage of profiled time, export time, CLI start-up.

For MiniLM (real weights) and the ResNet-50 layout, with both exporters:
  * parity against PyTorch at batch 1 and 4 (max abs error, cosine);
  * the share of ORT-profiled kernel time whose node resolves to a PyTorch module, on the
    ORT-optimized FP32 graph and on a QDQ INT8 graph (U8S8, per-channel, 4 random calibration batches);
  * export wall time.
Plus `toolchain --help` wall time (median of 15 runs).

Prints a table and writes benchmarks/results/export.json.   Usage: python benchmarks/bench_export.py
"""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

MODELS = ("minilm", "resnet-50")
EXPORTERS = ("dynamo", "torchscript")


def coverage(path: str, loaded, workdir: Path) -> dict:
    import onnx

    from toolchain.formats.nodemap import NodeModuleMap, OptimizedGraph
    from toolchain.model.forward import make_inputs
    from toolchain.profile.trace import profile_nodes

    node_map = NodeModuleMap.from_model(onnx.load(path, load_external_data=False))
    feeds = {k: v.numpy() for k, v in make_inputs(loaded, batch=1, seq_len=128 if loaded.is_text else None).items()}
    prof = profile_nodes(path, feeds, runs=10, workdir=workdir)
    graph = OptimizedGraph.from_model(onnx.load(str(prof.optimized_model)))
    resolved = unresolved = 0.0
    methods: dict[str, int] = {}
    missing = []
    for n in prof.nodes:
        r = node_map.resolve(n.name, n.op_type, graph)
        if r is None:
            unresolved += n.total_us
            missing.append(n.name)
        else:
            resolved += n.total_us
            methods[r.method] = methods.get(r.method, 0) + 1
    return {"profiled_nodes": len(prof.nodes), "resolved_time_share": resolved / (resolved + unresolved),
            "methods": methods, "unresolved": missing[:10]}


def quantize(path: str, out: Path) -> str:
    """QDQ U8S8 per-channel on every op ORT can quantize (no transformer fusions), 4 random samples."""
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.quantize import quantize_model
    from toolchain.targets.presets import QuantConfig

    data = load_dataset("random", path, DataOptions(samples=4, seq_len=64))
    return quantize_model(path, out, QuantConfig(), data, fuse=False).path


def help_time(runs: int = 15) -> dict:
    times = []
    exe = Path(sys.executable).with_name("toolchain")
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "max_s": max(times), "runs": runs}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            for exporter in EXPORTERS:
                work = Path(tmp) / f"{name}-{exporter}"
                work.mkdir()
                loaded = load_model(name)
                t = time.perf_counter()
                result = export_model(loaded, work / "model.onnx", ExportOptions(exporter=exporter))
                seconds = time.perf_counter() - t
                fp32 = coverage(result.path, loaded, work / "fp32")
                qdq = coverage(quantize(result.path, work / "q.onnx"), loaded, work / "qdq")
                rows.append({"model": name, "exporter": exporter, "export_s": round(seconds, 2), "nodes": result.nodes,
                             "parity": [{"batch": p.batch, "max_abs_error": p.max_abs_error, "cosine": p.cosine}
                                        for p in result.parity],
                             "coverage_fp32": fp32, "coverage_qdq": qdq})
                print(f"done {name} {exporter}", file=sys.stderr)
    cli = help_time()

    table = Table(title="Export: parity and node-to-module coverage of profiled time")
    for col in ("model", "exporter", "nodes", "export s", "1 - cosine b1", "1 - cosine b4", "max abs err",
                "FP32 time mapped", "QDQ time mapped"):
        table.add_column(col, justify="right")
    for r in rows:
        p1, p4 = r["parity"]
        table.add_row(r["model"], r["exporter"], str(r["nodes"]), f"{r['export_s']:.1f}", f"{1 - p1['cosine']:.1e}",
                      f"{1 - p4['cosine']:.1e}", f"{max(p1['max_abs_error'], p4['max_abs_error']):.1e}",
                      f"{r['coverage_fp32']['resolved_time_share']:.2%}", f"{r['coverage_qdq']['resolved_time_share']:.2%}")
    console = Console(width=170)
    console.print(table)
    console.print(f"toolchain --help: median {cli['median_s'] * 1000:.0f} ms, max {cli['max_s'] * 1000:.0f} ms "
                  f"over {cli['runs']} runs")
    out = Path(__file__).parent / "results" / "export.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
                               "rows": rows, "cli_help": cli}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
