"""Distillation benchmark: recovering a pruned model with knowledge distillation against plain
cross-entropy fine-tuning, at equal epochs, on real data.

For each model the unpruned network is the teacher; the student is the same network pruned one-shot
(L2 magnitude, --ratio, no fine-tuning). The student is then trained for the same epochs on the same
samples with the same optimizer (AdamW, cosine schedule), once with cross-entropy on the labels and once
with the KD loss alpha * T^2 * KL + (1 - alpha) * CE against the teacher, and evaluated on held-out data.
Several seeds; prints a table and writes benchmarks/results/distill.json.

Usage: python benchmarks/bench_distill.py [--models fashion-cnn,mnist-cnn] [--ratio 0.75] [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="fashion-cnn,mnist-cnn")
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    import tempfile

    from bench_prune import fashion_cnn
    from rich.console import Console
    from rich.table import Table

    from toolchain.data.dataset import DataOptions
    from toolchain.model.data import load_dataset_for
    from toolchain.model.load import load_model
    from toolchain.prune import PruneConfig, prune_model
    from toolchain.training import evaluate, train

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "fashion-cnn":
                teacher, _, _ = fashion_cnn(Path(tmp), 3, 20000)
                train_data = load_dataset_for("builtin:fashion-mnist", teacher, DataOptions(samples=args.samples))
                test = load_dataset_for("builtin:fashion-mnist-test", teacher, DataOptions(samples=2000))
            else:
                teacher = load_model(name)
                data = load_dataset_for("builtin:mnist", teacher, DataOptions())
                train_data, test = data.take(0, args.samples), data.take(args.samples, None)
            pruned = prune_model(teacher, PruneConfig(importance="l2", ratio=args.ratio, finetune_epochs=0),
                                 train_data, test).module
            result = {"model": name, "teacher": evaluate(teacher, teacher.module, test).accuracy,
                      "pruned": evaluate(teacher, pruned, test).accuracy, "ce": [], "kd": []}
            for seed in range(args.seeds):
                for method in ("ce", "kd"):
                    student = copy.deepcopy(pruned)
                    train(teacher, student, train_data, epochs=args.epochs, lr=args.lr, seed=seed,
                          teacher=teacher.module if method == "kd" else None, teacher_loaded=teacher,
                          temperature=args.temperature, alpha=args.alpha)
                    result[method].append(evaluate(teacher, student, test).accuracy)
            rows.append(result)
            print(f"{name}: CE {result['ce']}, KD {result['kd']}", file=sys.stderr)
    t = Table(title=f"recovering a {args.ratio:.0%}-pruned model: CE vs KD (T={args.temperature}, alpha={args.alpha}), "
                    f"{args.epochs} epochs, {args.samples} samples, {args.seeds} seeds")
    for col in ("model", "teacher", "pruned", "CE (mean)", "KD (mean)", "CE seeds", "KD seeds"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(r["model"], f"{r['teacher']:.2%}", f"{r['pruned']:.2%}", f"{statistics.fmean(r['ce']):.2%}",
                  f"{statistics.fmean(r['kd']):.2%}", " ".join(f"{x:.2%}" for x in r["ce"]),
                  " ".join(f"{x:.2%}" for x in r["kd"]))
    Console(width=150).print(t)
    out = HERE / "results" / "distill.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
