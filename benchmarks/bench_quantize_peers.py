"""The tool's INT8 against ONNX Runtime used by hand, on real models and real data.

* EfficientNet-Lite0 (ImageNet weights) on crops of real photographs: calibration on ``builtin:photos``
  (crops of 7 photographs), fidelity on ``builtin:photos-test`` (crops of the other photographs, never
  calibrated on: 266 with Debian's mate-backgrounds installed, as ``make bench`` does);
* MiniLM (all-MiniLM-L6-v2) on real drug reviews (``builtin:drugreviews``: the first 128 calibrate, the
  next 256 evaluate), sequence 128, fidelity against the FP32 *PyTorch* embeddings (mean-pooled).

Candidates, side by side in one interleaved run per thread count (1 and 2 threads, ORT spinning off):
FP32; ORT's ``quantize_static`` with its defaults (no options, no pre-processing); ORT U8S8 per-channel
(``quant_pre_process`` then ``quantize_static(per_channel=True, activation_type=QUInt8,
weight_type=QInt8)``); ORT ``quantize_dynamic`` with its defaults; and what ``toolchain quantize`` writes
with its defaults for this machine (its preset, its accuracy guard, 1-point / cosine-0.99 budget).

Prints a table and writes benchmarks/results/quantize_peers.json (with the CPU model and flags).
Usage: python benchmarks/bench_quantize_peers.py [--models efficientnet-lite0,minilm] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

# model -> (calibration spec, samples, evaluation spec, samples; evaluation after the calibration samples
# when both specs are the same)
MODELS = {
    "efficientnet-lite0": ("builtin:photos", 98, "builtin:photos-test", 400),
    "minilm": ("builtin:drugreviews", 128, "builtin:drugreviews", 256),
}


def ort_peers(fp32: Path, tmp: Path, calib, transformer: bool) -> dict[str, Path]:
    """INT8 models as a user of ONNX Runtime writes them by hand."""
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from toolchain.core.fsio import captured_output
    from toolchain.quantize.static import CalibrationReader

    out: dict[str, Path] = {}
    with captured_output():
        default = tmp / "ort-default.onnx"
        quantize_static(str(fp32), str(default), CalibrationReader(calib, 8))
        out["ORT quantize_static defaults"] = default
        pre = tmp / "ort-pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=transformer)
        u8s8 = tmp / "ort-u8s8.onnx"
        quantize_static(str(pre), str(u8s8), CalibrationReader(calib, 8), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out["ORT U8S8 per-channel"] = u8s8
        dynamic = tmp / "ort-dynamic.onnx"
        quantize_dynamic(str(fp32), str(dynamic))
        out["ORT quantize_dynamic defaults"] = dynamic
    return out


def torch_reference(name: str, evaluation):
    """FP32 PyTorch outputs on ``evaluation`` (mean-pooled embeddings for MiniLM)."""
    import numpy as np
    import torch

    from toolchain.model.forward import run_torch
    from toolchain.model.load import load_model
    from toolchain.runtime.outputs import pooled

    model = load_model(name)
    outs = [run_torch(model, {k: torch.from_numpy(v) for k, v in b.items()})[0] for b in evaluation.batches(32)]
    return pooled(np.concatenate(outs), evaluation)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model
    from toolchain.quantize import speed_and_fidelity
    from toolchain.quantize.job import BudgetError, QuantizeJob, run_quantize
    from toolchain.runtime.outputs import fidelity, is_classifier, pooled, run_outputs
    from toolchain.runtime.session import create_session
    from toolchain.runtime.timing import conditions

    threads = [int(t) for t in args.threads.split(",")]
    rows, tool_reports = [], {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models.split(","):
            calib_spec, n_calib, eval_spec, n_eval = MODELS[name]
            fp32 = tmp / f"{name}.onnx"
            export_model(load_model(name), fp32, ExportOptions(parity=False))
            opts = DataOptions(seq_len=128)
            if calib_spec == eval_spec:
                pool = load_dataset(calib_spec, fp32, DataOptions(samples=n_calib + n_eval, seq_len=128))
                calib, evaluation = pool.take(0, n_calib), pool.take(n_calib, None)
            else:
                calib = load_dataset(calib_spec, fp32, DataOptions(samples=n_calib, seq_len=128))
                evaluation = load_dataset(eval_spec, fp32, DataOptions(samples=n_eval, seq_len=128))
            transformer = name == "minilm"
            paths = {"FP32": fp32, **ort_peers(fp32, tmp, calib, transformer)}
            started = time.perf_counter()
            job = QuantizeJob(model=str(fp32), output=str(tmp / f"{name}-tool.onnx"), calib_data=calib_spec,
                              calib_samples=n_calib, eval_data=None if calib_spec == eval_spec else eval_spec,
                              eval_samples=n_eval, seq_len=opts.seq_len)
            try:
                report = run_quantize(job)
            except BudgetError as err:  # over budget: the tool writes nothing, and says so
                report = {**err.report, "recommendation": str(err)}
            tool_seconds = time.perf_counter() - started
            tool_reports[name] = {k: report.get(k) for k in ("preset", "quantization", "guard", "notes",
                                                             "recommendation", "timing", "failed")}
            if report.get("output"):
                paths[f"toolchain ({report['quantization']['label']})"] = Path(report["output"])
            else:
                print(f"{name}: toolchain wrote nothing: {report.get('recommendation')}", file=sys.stderr)
            reference = torch_reference(name, evaluation) if transformer else None
            classifier = is_classifier(str(fp32))
            for t in threads:
                latency, fids = speed_and_fidelity({k: str(v) for k, v in paths.items()}, evaluation, batches=(1, 8),
                                                   runs=args.runs, threads=t)
                for label, path in paths.items():
                    fid = fids[label]
                    if reference is not None:  # against FP32 PyTorch, not FP32 ONNX
                        out = pooled(run_outputs(create_session(str(path), ["cpu"], threads=t), evaluation), evaluation)
                        fid = fidelity(reference, out, None, classifier)
                    rows.append({
                        "model": name, "config": label, "threads": t,
                        "calibration": f"{calib_spec} ({len(calib)})", "evaluation": f"{eval_spec} ({len(evaluation)}"
                        + (f", after the {len(calib)} calibration samples)" if calib_spec == eval_spec else ")"),
                        "reference": "FP32 PyTorch" if reference is not None else "FP32 ONNX",
                        "latency": {b: latency[label][b].to_latency_dict() for b in (1, 8)},
                        "speedup": {b: latency["FP32"][b].median / latency[label][b].median for b in (1, 8)},
                        "cosine": fid.cosine, "agreement": fid.agreement,
                        "quantize_s": round(tool_seconds, 1) if label.startswith("toolchain") else None,
                    })
            print(f"done {name}", file=sys.stderr)

    table = Table(title=f"INT8 against ORT by hand: medians of {args.runs} interleaved runs, spinning off")
    for col in ("model", "configuration", "thr", "b1 ms", "b8 ms", "speed b1", "speed b8", "cosine", "top-1 agree"):
        table.add_column(col, justify="left" if col in ("model", "configuration") else "right")
    for r in rows:
        table.add_row(r["model"], r["config"], str(r["threads"]), f"{r['latency'][1]['median_ms']:.2f}",
                      f"{r['latency'][8]['median_ms']:.2f}", f"{r['speedup'][1]:.2f}x", f"{r['speedup'][8]:.2f}x",
                      f"{r['cosine']:.5f}", "-" if r["agreement"] is None else f"{r['agreement']:.2%}")
    Console(width=170).print(table)
    cond = conditions(None, runs=args.runs, warmup=3)
    print(f"CPU: {cond['cpu']['model']} ({cond['cpu']['cores']} logical cores), flags "
          + ", ".join(f for f, on in cond["cpu"]["flags"].items() if on))
    out = Path(__file__).parent / "results" / "quantize_peers.json"
    out.parent.mkdir(exist_ok=True)
    # a run of some models replaces their rows and keeps the others'
    previous = json.loads(out.read_text()) if out.is_file() else {}
    ran = {r["model"] for r in rows}
    rows = [r for r in previous.get("rows", []) if r["model"] not in ran] + rows
    tool_reports = {**{k: v for k, v in previous.get("toolchain", {}).items() if k not in ran}, **tool_reports}
    out.write_text(json.dumps({"conditions": cond, "runs": args.runs, "rows": rows, "toolchain": tool_reports},
                              indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
