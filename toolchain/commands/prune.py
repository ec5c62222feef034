"""toolchain prune: the flags parsed into a :class:`~toolchain.prune.PruneJob`, one
:func:`~toolchain.prune.run_prune` call, and its report rendered.

Re-measuring on the target (``--reprofile-every``) exports and profiles, which are other stages: this
command builds that :data:`~toolchain.prune.Reprofile` callable (:func:`reprofiler`) and hands it to the
prune stage, which only reads the cost table it returns.

At ``--help`` time only :mod:`toolchain.prune.importance` is read (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from toolchain.commands.common import FiniteFloatRange, emit, is_quiet, json_option, json_safe_stdout, status
from toolchain.energy import METERS
from toolchain.prune.importance import ENERGY, IMPORTANCES

if TYPE_CHECKING:
    from toolchain.formats.costs import CostTable
    from toolchain.model.spec import LoadedModel
    from toolchain.prune import Reprofile
    from toolchain.targets.target import Target


@click.command()
@click.argument("model")
@click.option("--ratio", type=float, help="Uniform channel pruning ratio in (0, 1), one shot (magnitude/taylor).")
@click.option("--target-energy-reduction", type=float, metavar="E",
              help="Prune step by step until the cost table's energy per inference falls by this fraction, e.g. 0.3.")
@click.option("--target-latency-reduction", type=float, metavar="L",
              help="Same, on the cost table's per-layer latency.")
@click.option("--importance", type=click.Choice(list(IMPORTANCES)), default=ENERGY, show_default=True,
              help="l1/l2/taylor: every layer loses the same share (channels ranked by norm or Taylor score); "
                   "energy: the group with the most energy per unit of importance is cut first.")
@click.option("--costs", type=click.Path(), help="Cost table of MODEL's export on the target (`toolchain profile`).")
@click.option("--target", "target_spec", metavar="TARGET", help="Target the cost table was measured on (its round_to "
              "sets channel multiples; --reprofile-every measures there).")
@click.option("--eval", "eval_", required=True, metavar="DATA", help="Held-out data the accuracy budget is judged on.")
@click.option("--train", "train_", metavar="DATA", help="Fine-tuning data (default: the --eval samples not held out).")
@click.option("--samples", type=click.IntRange(10), default=2000, show_default=True, help="Samples read from the data.")
@click.option("--max-accuracy-drop", type=FiniteFloatRange(0), default=1.0, show_default=True,
              help="Accuracy budget in points (cosine x 100 for unlabelled data); a step that breaks it is rolled back.")
@click.option("--step", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Share of a layer group's channels cut per step.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Weight of the importance a step removes.")
@click.option("--beta", type=float, default=1.0, show_default=True, help="Weight of the energy a step saves.")
@click.option("--epochs", "finetune_epochs", type=click.IntRange(0), default=1, show_default=True,
              help="Fine-tuning epochs after each step.")
@click.option("--lr", type=FiniteFloatRange(0, min_open=True), help="Fine-tuning learning rate (default 1e-4; 5e-5 for "
              "transformers): small steps, so a trained model is repaired, not retrained (1e-3 cost a "
              "Fashion-MNIST CNN a point of accuracy per step in the benchmark).")
@click.option("--round-to", type=click.IntRange(1), help="Channel multiple (default: the target's round_to).")
@click.option("--exclude", multiple=True, metavar="LAYER", help="Module path to leave alone (repeatable); the "
              "classifier head always is.")
@click.option("--reprofile-every", type=click.IntRange(0), default=0, show_default=True,
              help="Re-measure the pruned model on the target every K kept steps (0: predict from MACs).")
@click.option("--meter", type=click.Choice(list(METERS)), help="Meter for --reprofile-every.")
@click.option("--max-steps", type=click.IntRange(1), default=40, show_default=True)
@click.option("--trials", type=click.IntRange(1), default=3, show_default=True,
              help="energy: candidates tried on copies each step; the one saving most energy per point lost wins.")
@click.option("--patience", type=click.IntRange(1), default=3, show_default=True,
              help="energy: rolled-back steps in a row before stopping.")
@click.option("--weights", help="State dict for a module:factory MODEL.")
@click.option("--input-shape", "input_shapes", multiple=True, help="Input spec for a module:factory MODEL.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the pruned model.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing pruned model there.")
@json_option
@click.pass_context
def prune(ctx, model, ratio, target_energy_reduction, target_latency_reduction, importance, costs, target_spec, eval_,
          train_, samples, max_accuracy_drop, step, alpha, beta, finetune_epochs, lr, round_to, exclude,
          reprofile_every, meter, max_steps, trials, patience, weights, input_shapes, output, force, as_json) -> None:
    """Prune MODEL structurally, cutting first what costs the most energy on the target.

    \b
    Channels are removed with Torch-Pruning's dependency graph, so coupled layers (residual
    additions, BatchNorms, the next layer's inputs) stay consistent. After each step the
    model is fine-tuned briefly and judged on --eval; a step that costs more accuracy than
    --max-accuracy-drop is rolled back. The output directory holds plain tensors
    (weights.pt) and the new shapes (pruned.json): `toolchain export DIR` takes it.

    \b
    Examples:
      toolchain export mnist-cnn -o mnist.onnx
      toolchain profile mnist.onnx --target x86-cpu --meter estimate -o mnist.costs
      toolchain prune mnist-cnn --costs mnist.costs/costs.json --target x86-cpu \\
          --target-energy-reduction 0.4 --eval builtin:mnist --max-accuracy-drop 1 -o mnist.pruned
      toolchain prune mnist-cnn --importance l2 --ratio 0.3 --eval builtin:mnist -o mnist.l2
    """
    from toolchain.prune import PruneJob, run_prune

    job = PruneJob(model=model, ratio=ratio, target_energy_reduction=target_energy_reduction,
                   target_latency_reduction=target_latency_reduction, importance=importance, costs=costs,
                   target_spec=target_spec, eval_spec=eval_, train_spec=train_, samples=samples,
                   max_accuracy_drop=max_accuracy_drop, step=step, alpha=alpha, beta=beta,
                   finetune_epochs=finetune_epochs, lr=lr, round_to=round_to, exclude=tuple(exclude),
                   reprofile_every=reprofile_every, meter=meter, max_steps=max_steps, trials=trials, patience=patience,
                   weights=weights, input_shapes=tuple(input_shapes), output=output, force=force)
    report = None
    with json_safe_stdout(as_json), status("pruning", quiet=is_quiet(ctx, as_json)) as progress:
        report = run_prune(job, reprofiler(eval_), progress=progress).to_dict()

    def render(console) -> None:
        from rich.table import Table

        r = report["result"]
        console.print(f"[bold]{report['source']}[/] pruned with [bold]{report['importance']}[/] importance")
        console.print(f"  {r['metric_name']}: {r['base_metric']:.2f} -> {r['final_metric']:.2f} "
                      f"(budget {report['max_accuracy_drop']} points)")
        console.print(f"  parameters {r['params_before']:,} -> {r['params_after']:,} "
                      f"({1 - r['params_after'] / r['params_before']:.1%} fewer); MACs {r['macs_before']:,} -> "
                      f"{r['macs_after']:,} ({1 - r['macs_after'] / max(r['macs_before'], 1):.1%} fewer)")
        if report.get("costs"):
            console.print(f"  {report['cost_metric']} reduction {r['reduction']:.1%} ({r['reduction_kind']}; table "
                          f"{report['costs']})")
        t = Table(title="steps")
        for col in ("step", "pruned", "kept", r["metric_name"], "params", "reduction"):
            t.add_column(col, justify="left" if col == "pruned" else "right")
        for s in r["steps"]:
            t.add_row(str(s["step"]), ", ".join(s["pruned"]), "yes" if s["kept"] else "[red]rolled back[/]",
                      f"{s['accuracy']:.2f}", f"{s['params']:,}", f"{s['predicted_reduction']:.1%}")
        console.print(t)
        changed = {k: v for k, v in r["channels"].items() if v[0] != v[1]}
        console.print("  channels: " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in changed.items()))
        for f in report["files"]:
            console.print(f"  wrote {f}")

    emit(report, as_json, render)


def reprofiler(data_spec: str) -> Reprofile:
    """The ``--reprofile-every`` measurement: export the (pruned) model to a scratch ONNX file and profile
    it on the target (3 repeats, 10 profiled runs, the builtin ``data_spec`` as inputs where it is one);
    returns its cost table."""
    def measure(model: LoadedModel, target: Target, meter: str | None) -> CostTable:
        import tempfile
        from pathlib import Path

        from toolchain.export.exporter import ExportOptions, export_model
        from toolchain.profile.run import ProfileOptions, profile_model

        with tempfile.TemporaryDirectory(prefix="toolchain-reprofile-") as tmp:
            path = Path(tmp) / "pruned.onnx"
            export_model(model, path, ExportOptions(parity=False))
            return profile_model(path, target, ProfileOptions(meter=meter, repeats=3, profile_runs=10,
                                                              data=data_spec if data_spec.startswith("builtin:") else None))

    return measure
