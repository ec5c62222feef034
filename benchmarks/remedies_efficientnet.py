"""Post-training INT8 remedies on the real EfficientNet-Lite0 (ImageNet weights), measured on real photos.

Calibration and every fitted quantity (bias corrections, learned rounding) use ``builtin:photos`` (98
crops of 7 photographs); fidelity is measured on ``builtin:photos-test`` (266 crops of 19 other
photographs), never used for fitting: top-1 agreement and cosine of the logits against FP32.

Each INT8 model is measured two ways. ``exact``: the QDQ graph run without graph optimizations
(DequantizeLinear, float Conv, QuantizeLinear), i.e. exact int8 x int8 -> int32 arithmetic, which is what
AVX512-VNNI / AVX-VNNI kernels (VPDPBUSD) compute. ``ort``: ONNX Runtime's fused int8 kernels on this CPU;
on AVX2 without VNNI these use VPMADDUBSW, whose int16 pair sums saturate for U8S8 (ORT's documented
reason for ``reduce_range``), so ``ort`` here can be far below ``exact``. Speed ratios (FP32 median /
INT8 median, batch 1, 1 thread, interleaved runs) are measured on this machine only; the CPU model and
flags are recorded.

Rows: calibration method (MinMax / Entropy / Percentile), reduce_range, first conv / last Gemm kept in
FP32; cross-layer equalization (ReLU6 -> ReLU, its FP32 change measured), empirical bias correction,
AdaRound on the worst layers; and combinations.

Usage: python benchmarks/remedies_efficientnet.py [--model /tmp/eff/fp32.onnx] [--work DIR] [--quick]
(the model: ``toolchain export efficientnet-lite0 -o /tmp/eff/fp32.onnx``). Prints a table and writes
benchmarks/results/remedies_efficientnet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's share of the CPU: one core
os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from toolchain.data.load import load_dataset  # noqa: E402
from toolchain.quantize import quantize_model, speed_and_fidelity  # noqa: E402
from toolchain.quantize.adaround import adaround  # noqa: E402
from toolchain.quantize.biascorrect import correct_bias  # noqa: E402
from toolchain.quantize.equalize import equalize  # noqa: E402
from toolchain.quantize.layerstats import session  # noqa: E402
from toolchain.runtime.outputs import fidelity  # noqa: E402
from toolchain.runtime.timing import conditions  # noqa: E402
from toolchain.targets.presets import QuantConfig  # noqa: E402

RESULTS = Path(__file__).with_name("results") / "remedies_efficientnet.json"
STEM, FIRST_DW, FC = "node_Conv_881", "node_Conv_882", "node_linear"  # node names in the exported graph


def outputs(model, data, optimize: bool) -> np.ndarray:
    s = session(model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model).read_bytes(),
                optimize=optimize)
    return np.concatenate([s.run(None, b)[0] for b in data.batches(32)])


class Bench:
    def __init__(self, model: Path, work: Path):
        self.model, self.work = model, work
        work.mkdir(parents=True, exist_ok=True)
        self.calib = load_dataset("builtin:photos", str(model))
        self.held = load_dataset("builtin:photos-test", str(model))
        self.pre = work / "pre.onnx"
        self.rows: list[dict] = []
        self.ref = None

    def quantize(self, name: str, config: QuantConfig, fp32: Path | None = None) -> tuple[onnx.ModelProto, onnx.ModelProto]:
        """(pre-processed FP32 graph, QDQ model) for ``config`` (cached in the work directory)."""
        out, pre = self.work / f"{name}.onnx", self.work / f"{name}.pre.onnx"
        if not out.is_file() or not pre.is_file():
            quantize_model(fp32 or self.model, out, config, self.calib, keep_preprocessed=pre, force=True)
        if self.ref is None:
            if not self.pre.is_file():
                self.pre.write_bytes(pre.read_bytes())
            self.ref = outputs(onnx.load(self.pre), self.held, optimize=True)
        return onnx.load(pre), onnx.load(out)

    def measure(self, name: str, qdq: onnx.ModelProto, detail: dict | None = None, *, save: bool = True) -> dict:
        started = time.perf_counter()
        row: dict = {"remedy": name, "samples": len(self.held)}
        for label, optimize in (("exact", False), ("ort", True)):
            f = fidelity(self.ref, outputs(qdq, self.held, optimize), None, True)
            row[f"agreement_{label}"], row[f"cosine_{label}"] = round(100 * f.agreement, 2), round(f.cosine, 5)
        row["detail"] = detail or {}
        if save:
            path = self.work / f"final-{len(self.rows)}.onnx"
            onnx.save(qdq, path)
            row["path"] = str(path)
        self.rows.append(row)
        print(f"{name:58s} exact {row['agreement_exact']:5.1f}% cos {row['cosine_exact']:.5f} | "
              f"ort(here) {row['agreement_ort']:5.1f}% cos {row['cosine_ort']:.5f}  ({time.perf_counter() - started:.0f}s)",
              flush=True)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/eff/fp32.onnx")
    parser.add_argument("--work", default="/tmp/remedies_efficientnet")
    parser.add_argument("--quick", action="store_true", help="skip the histogram calibrations (slow)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=500, help="AdaRound iterations a layer")
    args = parser.parse_args()
    b = Bench(Path(args.model), Path(args.work))
    base = QuantConfig()

    # (4) calibration method, reduce_range, layers kept in FP32
    pre, q = b.quantize("minmax", base)
    b.measure("U8S8 per-channel MinMax (default)", q)
    configs = {"reduce_range": QuantConfig(reduce_range=True),
               "exclude first conv": QuantConfig(exclude=(STEM,)),
               "exclude first conv + first depthwise": QuantConfig(exclude=(STEM, FIRST_DW)),
               "exclude last Gemm": QuantConfig(exclude=(FC,))}
    if not args.quick:
        configs.update({"Entropy": QuantConfig(calibration="entropy"),
                        "Percentile 99.99": QuantConfig(calibration="percentile", percentile=99.99),
                        "Percentile 99.999": QuantConfig(calibration="percentile", percentile=99.999)})
    for label, config in configs.items():
        b.measure(label, b.quantize(label.replace(" ", "_"), config)[1])

    # (1) cross-layer equalization before quantization (ReLU6 -> ReLU: not equivalent, measured)
    fp32 = onnx.load(b.pre)
    eq, eq_info = equalize(fp32, relu6="relu", check={k: v[:8] for k, v in b.held.feeds.items()})
    eq_ref = outputs(eq, b.held, optimize=True)
    f_eq = fidelity(b.ref, eq_ref, None, True)
    eq_info.update(fp32_heldout_top1_agreement=round(100 * f_eq.agreement, 2), fp32_heldout_cosine=round(f_eq.cosine, 6))
    eq_info.pop("pair_names")
    print(f"CLE FP32 change (ReLU6 -> ReLU on {eq_info['clips_replaced']} clips): held-out top-1 agreement "
          f"{f_eq.agreement:.1%}, cosine {f_eq.cosine:.5f}, max abs change {eq_info['fp32_max_abs_change']:.3g}")
    eq_path = b.work / "equalized.onnx"
    onnx.save(eq, eq_path)
    _, eq_q = b.quantize("cle", base, fp32=eq_path)
    b.measure("CLE (ReLU6->ReLU) + MinMax", eq_q, eq_info)
    b.measure("CLE per-tensor weights", b.quantize("cle_pt", QuantConfig(per_channel=False), fp32=eq_path)[1])
    b.measure("per-tensor weights (no CLE)", b.quantize("pt", QuantConfig(per_channel=False))[1])

    # (2) bias correction, (3) AdaRound, on the default quantization and combined
    bc, bc_info = correct_bias(pre, q, b.calib)
    b.measure("bias correction (empirical, weights)", bc, {"largest": bc_info["largest"]})
    ar, ar_info = adaround(pre, q, b.calib, worst=None, iterations=args.iterations)
    b.measure("AdaRound all layers", ar, ar_info)
    arbc, _ = correct_bias(pre, ar, b.calib)
    b.measure("AdaRound all layers + bias correction", arbc)
    pre_x, q_x = b.quantize("exclude_first_conv", QuantConfig(exclude=(STEM,)))
    arx, _ = adaround(pre_x, q_x, b.calib, worst=None, iterations=args.iterations)
    arxbc, _ = correct_bias(pre_x, arx, b.calib)
    b.measure("exclude first conv + AdaRound all + bias correction", arxbc)

    # speed of the default and the best (exact agreement), batch 1, one thread, interleaved
    best = max(b.rows, key=lambda r: (r["agreement_exact"], r["cosine_exact"]))
    paths = {"FP32": str(b.pre), "INT8 default": b.rows[0]["path"], "INT8 best": best["path"]}
    latency, _ = speed_and_fidelity(paths, b.held.take(0, 8), batches=(1,), runs=args.runs, threads=1)
    speed = {name: round(latency["FP32"][1].median / latency[name][1].median, 3) for name in paths}
    print(f"speed vs FP32 here (batch 1, 1 thread): default {speed['INT8 default']:.2f}x, "
          f"best ({best['remedy']}) {speed['INT8 best']:.2f}x")
    result = {"model": "efficientnet-lite0 (ImageNet weights)", "calibration": {"source": b.calib.source, "samples": len(b.calib)},
              "heldout": {"source": b.held.source, "samples": len(b.held)},
              "measures": {"exact": "QDQ graph without optimizations: exact int8 arithmetic, as VNNI kernels compute",
                           "ort": "ORT fused int8 kernels on this CPU (AVX2 without VNNI saturates U8S8 pairs)"},
              "rows": [{k: v for k, v in r.items() if k != "path"} for r in b.rows],
              "speed_ratio_here": {"best": best["remedy"], "default": speed["INT8 default"], "best_ratio": speed["INT8 best"],
                                   "median_ms": {n: round(latency[n][1].median, 3) for n in paths}},
              "conditions": conditions(1, runs=args.runs, warmup=3)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
