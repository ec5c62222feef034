"""Quantization benchmark: FP32 against each INT8 configuration on the CPU execution provider.

For the ResNet-18/50 layouts, MobileNetV2, the BERT-base layout, the real MiniLM (on real drug reviews)
and the real ccexam MNIST CNN (on real MNIST digits): latency at batch 1 and 8 (interleaved runs,
medians), speed-up against FP32, size ratio, and fidelity (cosine, top-1 agreement, accuracy with labels).

Prints a table and writes benchmarks/results/quantize.json. Then, unless ``--models`` is given, runs
benchmarks/bench_quantize_peers.py: EfficientNet-Lite0 on real photo crops and MiniLM on real sentences,
the tool against ONNX Runtime by hand (``quantize_static`` defaults, U8S8 per-channel, ``quantize_dynamic``
defaults), 1 and 2 threads.
Usage: python benchmarks/bench_quantize.py [--models resnet-50,minilm] [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

warnings.filterwarnings("ignore")

# model -> (data spec, calibration samples, evaluation samples)
MODELS = {
    "mnist-cnn": ("builtin:mnist", 128, 4872),
    "resnet-18": ("random", 32, 32),
    "resnet-50": ("random", 32, 32),
    "mobilenet-v2": ("random", 32, 32),
    "minilm": ("builtin:drugreviews", 128, 256),
    "bert-base": ("random", 32, 32),
    "depthwise-net": ("random", 32, 32),  # benchmarks/depthwise_net.py, MobileNetV3-small-like
}
DEPTHWISE = str(Path(__file__).with_name("depthwise_net.py")) + ":make"


def configs_for(name: str):
    from toolchain.targets.presets import QuantConfig

    static = [QuantConfig(), QuantConfig(activations="int8"), QuantConfig(activations="int8", fmt="qoperator"),
              QuantConfig(reduce_range=True)]
    if name in ("minilm", "bert-base"):
        return [QuantConfig(mode="dynamic"), QuantConfig(mode="dynamic", per_channel=False), QuantConfig()]
    return static


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=None)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model
    from toolchain.quantize import quantize_model, speed_and_fidelity

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in (args.models or ",".join(MODELS)).split(","):
            spec, n_calib, n_eval = MODELS[name]
            fp32 = Path(tmp) / f"{name}.onnx"
            model = (load_model(DEPTHWISE, input_shapes=["pixel_values:1x3x224x224"]) if name == "depthwise-net"
                     else load_model(name))
            export_model(model, fp32, ExportOptions(parity=False))
            data = load_dataset(spec, fp32, DataOptions(samples=n_calib + n_eval, seq_len=128))
            calib, evaluation = data.take(0, n_calib), data.take(n_calib, None) if spec != "random" else data
            paths, info = {"FP32": str(fp32)}, {}
            for i, cfg in enumerate(configs_for(name)):
                t = time.perf_counter()
                res = quantize_model(fp32, Path(tmp) / f"{name}-{i}.onnx", cfg, calib)
                paths[cfg.label] = res.path
                info[cfg.label] = {"size_ratio": res.size_ratio, "quantize_s": time.perf_counter() - t}
            latency, fids = speed_and_fidelity(paths, evaluation, batches=(1, 8), runs=args.runs)
            for label in paths:
                rows.append({
                    "model": name, "config": label, "data": spec, "eval_samples": len(evaluation),
                    "latency_ms": {b: latency[label][b].median for b in (1, 8)},
                    "spread_pct": {b: latency[label][b].spread_pct for b in (1, 8)},
                    "speedup": {b: latency["FP32"][b].median / latency[label][b].median for b in (1, 8)},
                    "size_ratio": info.get(label, {}).get("size_ratio", 1.0),
                    "quantize_s": info.get(label, {}).get("quantize_s", 0.0),
                    "fidelity": asdict(fids[label]),
                })
            print(f"done {name}", file=sys.stderr)

    table = Table(title=f"INT8 on the CPU EP: medians of {args.runs} interleaved runs (seq 128 for text)")
    for col in ("model", "configuration", "b1 ms", "b8 ms", "speed b1", "speed b8", "size", "cosine", "agree",
                "accuracy"):
        table.add_column(col, justify="left" if col in ("model", "configuration") else "right")
    for r in rows:
        f = r["fidelity"]
        table.add_row(r["model"], r["config"], f"{r['latency_ms'][1]:.1f}", f"{r['latency_ms'][8]:.1f}",
                      f"{r['speedup'][1]:.2f}x", f"{r['speedup'][8]:.2f}x", f"{r['size_ratio']:.3f}",
                      f"{f['cosine']:.5f}", "-" if f["agreement"] is None else f"{f['agreement']:.2%}",
                      "-" if f["accuracy_int8"] is None else f"{f['accuracy_int8']:.2%}")
    Console(width=170).print(table)
    out = Path(__file__).parent / "results" / "quantize.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(),
                                           "python": platform.python_version()}, "runs": args.runs, "rows": rows},
                              indent=2))
    print(f"wrote {out}")
    if args.models is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_quantize_peers import main as peers

        sys.argv = [sys.argv[0]]
        peers()


if __name__ == "__main__":
    main()
