"""Timing benchmark: do the INT8/FP32 ratios quantize reports agree with the same two files timed alone?

For two ONNX files (default: mnist-cnn exported and quantized in a temp dir with the toolchain's own
library calls; or ``--fp32 A.onnx --int8 B.onnx``), at each batch size:

(a) the tool's alternated measurement (:func:`toolchain.quantize.measure.speed_and_fidelity`, what
    ``toolchain quantize``, the guard and ``--auto`` report: sessions alternated run by run, spinning off);
(b) each model alone in its own subprocess (``python -c``: a bare ONNX Runtime session loop with the
    same intra-op threads, ORT's default options otherwise (spinning on), no toolchain code); and (b')
    the same with spinning off, which separates the cost of alternation from the cost of not spinning
    (on sub-millisecond models a worker woken from sleep costs tens of microseconds per parallel op);
(c) with ``--spinning-too``: the alternated measurement with ORT's default spinning on (the old way).

Prints medians, the INT8/FP32 latency ratio both ways and their agreement (ratio of ratios; the issue's
bar: within 10%), and writes benchmarks/results/timing.json with the CPU model and its INT8 flags.
Usage: python benchmarks/bench_timing.py [--fp32 A.onnx --int8 B.onnx] [--runs 50] [--batches 1,8]
       [--threads N] [--spinning-too]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

WARMUP = 3
TOLERANCE = 0.10  # the done-when: ratios agree within 10%

# One model alone: a bare ORT session loop (no toolchain import), the same threads, medians in ms.
ALONE = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
path, feeds_path, threads, warmup, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
so = ort.SessionOptions()
so.log_severity_level = 4
if sys.argv[6] == "off":
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
if threads:
    so.intra_op_num_threads = threads
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
feeds = dict(np.load(feeds_path))
for _ in range(warmup):
    s.run(None, feeds)
samples = []
for _ in range(runs):
    t = time.perf_counter()
    s.run(None, feeds)
    samples.append(time.perf_counter() - t)
print(json.dumps({"median_ms": float(np.median(samples)) * 1000, "runs": runs}))
"""


def default_pair(tmp: Path) -> tuple[str, str, str]:
    """mnist-cnn exported and statically quantized (the toolchain's library calls); its data spec."""
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model
    from toolchain.quantize import quantize_model
    from toolchain.targets.presets import QuantConfig

    fp32 = tmp / "mnist-cnn.onnx"
    export_model(load_model("mnist-cnn"), fp32, ExportOptions(parity=False))
    calib = load_dataset("builtin:mnist", fp32, DataOptions(samples=64))
    int8 = quantize_model(fp32, tmp / "mnist-cnn.int8.onnx", QuantConfig(), calib).path
    return str(fp32), str(int8), "builtin:mnist"


def alone_ms(path: str, feeds_path: Path, threads: int | None, runs: int, spinning: bool = True) -> float:
    out = subprocess.run([sys.executable, "-c", ALONE, path, str(feeds_path), str(threads or 0), str(WARMUP), str(runs),
                          "on" if spinning else "off"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def alternated_spinning_on(paths: dict[str, str], feeds: dict, threads: int | None, runs: int) -> dict[str, float]:
    """The old way, for reference: alternated, ORT's default spinning."""
    from toolchain.runtime.session import create_session
    from toolchain.runtime.timing import interleaved

    sessions = {k: create_session(p, ["cpu"], threads=threads) for k, p in paths.items()}
    stats = interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, warmup=WARMUP, runs=runs)
    return {k: v.median for k, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fp32")
    parser.add_argument("--int8")
    parser.add_argument("--data", help="data spec for the inputs (default: builtin:mnist for the default pair, "
                                       "else random)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's)")
    parser.add_argument("--spinning-too", action="store_true", help="also time alternated with spinning on")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "timing.json"))
    args = parser.parse_args()
    if bool(args.fp32) != bool(args.int8):
        parser.error("give both --fp32 and --int8, or neither")
    batches = tuple(int(b) for b in args.batches.split(","))

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.quantize.measure import WARMUP as TOOL_WARMUP
    from toolchain.quantize.measure import _feeds_for_batch, speed_and_fidelity
    from toolchain.runtime.timing import conditions

    assert TOOL_WARMUP == WARMUP
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-timing-") as tmp:
        if args.fp32:
            fp32, int8, spec = args.fp32, args.int8, args.data or "random"
        else:
            print("exporting and quantizing mnist-cnn", file=sys.stderr)
            fp32, int8, spec = default_pair(Path(tmp))
            spec = args.data or spec
        data = load_dataset(spec, fp32, DataOptions(samples=max(batches)))
        paths = {"FP32": fp32, "INT8": int8}
        print(f"(a) alternated, {args.runs} runs", file=sys.stderr)
        latency, _ = speed_and_fidelity(paths, data, batches=batches, runs=args.runs, threads=args.threads)
        for batch in batches:
            feeds = _feeds_for_batch(data, batch)
            feeds_path = Path(tmp) / f"feeds-{batch}.npz"
            np.savez(feeds_path, **feeds)
            print(f"(b) alone, batch {batch}", file=sys.stderr)
            alone = {k: alone_ms(p, feeds_path, args.threads, args.runs) for k, p in paths.items()}
            alone_off = {k: alone_ms(p, feeds_path, args.threads, args.runs, spinning=False) for k, p in paths.items()}
            alt = {k: latency[k][batch].median for k in paths}
            row = {"batch": batch, "alternated_ms": alt, "alone_ms": alone, "alone_spinning_off_ms": alone_off,
                   "ratio_alternated": alt["INT8"] / alt["FP32"], "ratio_alone": alone["INT8"] / alone["FP32"],
                   "ratio_alone_spinning_off": alone_off["INT8"] / alone_off["FP32"],
                   "spread_pct": {k: latency[k][batch].spread_pct for k in paths}}
            row["agreement"] = row["ratio_alternated"] / row["ratio_alone"]
            row["within_tolerance"] = abs(row["agreement"] - 1) <= TOLERANCE
            row["agreement_spinning_off"] = row["ratio_alternated"] / row["ratio_alone_spinning_off"]
            if args.spinning_too:
                spin = alternated_spinning_on(paths, feeds, args.threads, args.runs)
                row["alternated_spinning_ms"] = spin
                row["ratio_alternated_spinning"] = spin["INT8"] / spin["FP32"]
            rows.append(row)

    cond = conditions(args.threads, runs=args.runs, warmup=WARMUP)
    flags = ", ".join(f for f, on in cond["cpu"]["flags"].items() if on) or "none"
    table = Table(title=f"INT8/FP32 alternated (spinning off) vs each alone in its own process: medians of "
                        f"{args.runs} runs, {cond['threads']} threads, {cond['cpu']['model']} ({flags})",
                  title_justify="left")
    cols = ["batch", "FP32 alt ms", "INT8 alt ms", "ratio alt", "FP32 alone ms", "INT8 alone ms", "ratio alone",
            "agreement", "ratio alone no-spin", "agreement no-spin"]
    if args.spinning_too:
        cols += ["FP32 spin ms", "INT8 spin ms", "ratio spin"]
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        cells = [str(r["batch"]), f"{r['alternated_ms']['FP32']:.3f}", f"{r['alternated_ms']['INT8']:.3f}",
                 f"{r['ratio_alternated']:.3f}", f"{r['alone_ms']['FP32']:.3f}", f"{r['alone_ms']['INT8']:.3f}",
                 f"{r['ratio_alone']:.3f}",
                 f"[{'green' if r['within_tolerance'] else 'red'}]{r['agreement']:.3f}[/]",
                 f"{r['ratio_alone_spinning_off']:.3f}", f"{r['agreement_spinning_off']:.3f}"]
        if args.spinning_too:
            cells += [f"{r['alternated_spinning_ms']['FP32']:.3f}", f"{r['alternated_spinning_ms']['INT8']:.3f}",
                      f"{r['ratio_alternated_spinning']:.3f}"]
        table.add_row(*cells)
    Console(width=200).print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"models": {"fp32": fp32 if args.fp32 else "mnist-cnn (exported)",
                                          "int8": int8 if args.int8 else "mnist-cnn static QDQ U8S8 (quantized)"},
                               "data": spec, "timing": cond, "tolerance": TOLERANCE,
                               "cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {out}; all within {TOLERANCE:.0%}: {all(r['within_tolerance'] for r in rows)}")


if __name__ == "__main__":
    main()
