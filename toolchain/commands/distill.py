"""toolchain distill"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from toolchain.commands.common import (
    FiniteFloatRange,
    emit,
    is_quiet,
    json_option,
    json_safe_stdout,
    progress_logged,
    progress_mode,
    status,
)

CONFIG_OPTIONS = ("teacher", "student", "data", "epochs", "lr", "batch_size", "temperature", "alpha", "label_free",
                  "val_fraction", "samples", "seq_len", "weights", "input_shapes", "weight_decay", "seed",
                  "hidden_weight", "hidden_loss")


@contextmanager
def _bars(quiet: bool, epochs: int) -> Iterator[tuple[Callable[[str], None] | None, Callable | None]]:
    """On a terminal, a status line while loading, then one rich progress bar per epoch, on stderr; on a
    file or pipe the plain progress lines of :func:`~toolchain.commands.common.status`; nothing when quiet
    (see :func:`~toolchain.commands.common.progress_mode`)."""
    mode = "none" if quiet else progress_mode()
    if mode == "none":
        yield None, None
        return
    if mode == "lines":
        with status("distill", quiet=False) as say:
            yield say, None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        prep = bar.add_task("preparing", total=None, loss="")
        tasks: dict[int, int] = {}

        def progress(text: str) -> None:
            if not tasks:
                bar.update(prep, description=text)

        def logged(text: str) -> None:  # a library's progress logger: above the bars once they run
            if tasks:
                bar.console.print(text, markup=False, highlight=False)
            else:
                progress(text)

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            if epoch not in tasks:
                bar.update(prep, visible=False)
                tasks[epoch] = bar.add_task(f"epoch {epoch}/{epochs}", total=steps, loss="")
            bar.update(tasks[epoch], completed=step, loss=f"loss {loss:.4f}")

        with progress_logged(logged):
            yield progress, on_step


@click.command()
@click.option("--teacher", metavar="MODEL", help="The model to imitate: a catalogue name, a transformers directory "
              "or module:factory (see `toolchain models`).")
@click.option("--student", metavar="MODEL", help="The model to train, any source as for --teacher; a module:factory "
              "without --input-shape takes the teacher's inputs.")
@click.option("--data", metavar="DATA", help="Training data, read as the teacher reads it: builtin:mnist, "
              "builtin:drugreviews, an .npz (optional labels), a folder of images, a .txt file, or random.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), metavar="OUT_DIR",
              help="Directory for student.pt (best weights), checkpoint.pt and distill.json.")
@click.option("--epochs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--lr", type=FiniteFloatRange(0, min_open=True),
              help="Peak AdamW learning rate (cosine schedule over all steps). Default by the teacher's family: "
                   "5e-5 for a transformer (a transformers model whose config has attention heads: BERT, MiniLM, "
                   "ViT, GPT-2; higher rates wreck pretrained weights), 1e-3 for any other model (CNNs, "
                   "transformers ResNets included).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--temperature", type=FiniteFloatRange(0, min_open=True), default=4.0, show_default=True,
              help="Softmax temperature of the KD loss.")
@click.option("--alpha", type=FiniteFloatRange(0, 1), default=0.7, show_default=True,
              help="Weight of the KD term against cross-entropy on the labels (1 without labels).")
@click.option("--label-free", type=click.Choice(["kl", "mse", "cosine"]), help="Ignore labels and match the "
              "teacher's outputs: kl on logits, mse or cosine on embeddings (default without labels: kl for "
              "logits, cosine for embeddings).")
@click.option("--hidden-weight", type=FiniteFloatRange(0), help="Weight of the hidden-state term added to the "
              "output loss: the distance (--hidden-loss) between the student's and the teacher's hidden states of "
              "every layer, mean over layers and tokens. Default by the pair: 1.0 when teacher and student are "
              "transformers with the same hidden size and number of layers (e.g. a student from `toolchain prune`: "
              "heads and MLP width cut), else 0 (off, and the only value other pairs take). 0 turns it off.")
@click.option("--hidden-loss", type=click.Choice(["mse", "cosine"]), default="mse", show_default=True,
              help="Distance between hidden states: mean squared error or 1 - cosine, per token.")
@click.option("--val-fraction", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Samples held out (seeded) to pick the best epoch.")
@click.option("--samples", type=click.IntRange(3), help="Use the first N samples of the data (default: all).")
@click.option("--seq-len", type=click.IntRange(1), default=128, show_default=True, help="Token length of text samples.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Initial state_dict of a module:factory student.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="[NAME:]DIMS[:DTYPE]",
              help="Input of a module:factory student (default: the teacher's inputs).")
@click.option("--weight-decay", type=FiniteFloatRange(0), default=0.01, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split, shuffling, dropout and a "
              "factory student's initialisation.")
@click.option("--resume", is_flag=True, help="Continue the job in OUT_DIR after its last completed epoch; options "
              "left out take the recorded values.")
@click.option("-f", "--force", is_flag=True, help="Start over in an OUT_DIR that holds a distillation; the "
              "previous one is replaced only when the new run is complete.")
@json_option
@click.pass_context
def distill(ctx, output, resume, force, as_json, **options) -> None:
    """Distill a student from a teacher: KD loss with labels, or label-free on outputs/embeddings.

    With labels and logits the loss is alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE;
    without labels, or with --label-free, the student matches the teacher's logits (kl) or pooled
    embeddings (mse, cosine). A transformer student of the teacher's hidden size and depth (a pruned
    one) also matches its hidden states of every layer, weighted by --hidden-weight (default 1.0 for
    such a pair, 0 otherwise). AdamW with a cosine schedule, peak --lr 5e-5 for transformer teachers
    and 1e-3 for others by default; the best epoch on the held-out samples (accuracy, else cosine to
    the teacher) is kept as OUT_DIR/student.pt, a plain state_dict.

    Every epoch is checkpointed: after Ctrl-C or a kill, --resume finishes the job with the same
    result as an uninterrupted run. A different --epochs is a new job (--force).

    \b
    Examples:
      toolchain distill --teacher mnist-cnn --student small.py:make --data builtin:mnist -o out/small
      toolchain distill --teacher minilm --student student_dir --data reviews.txt --label-free cosine -o out/s
      toolchain distill --teacher tiny-bert --student out/bert.pruned --data random -o out/b   (+ hidden states)
      toolchain distill -o out/small --resume
    """
    from click.core import ParameterSource

    from toolchain.core.errors import ToolchainError
    from toolchain.distill import DistillConfig, recorded_config, run_distill

    if resume and force:
        raise ToolchainError("--resume and --force exclude each other")
    given = {k: v for k, v in options.items()
             if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}
    given["input_shapes"] = tuple(options["input_shapes"])
    if resume:
        values = recorded_config(output).to_dict()
        values.update({k: v for k, v in given.items() if k != "input_shapes" or v})
    else:
        missing = [f"--{k}" for k in ("teacher", "student", "data") if not options[k]]
        if missing:
            raise ToolchainError(f"missing {', '.join(missing)}", hint="--resume takes them from OUT_DIR")
        values = {k: options[k] for k in CONFIG_OPTIONS}
    config = DistillConfig.from_dict(values)
    quiet = is_quiet(ctx, as_json)
    with json_safe_stdout(as_json), _bars(quiet, config.epochs) as (progress, on_step):
        report = run_distill(config, output, resume=resume, force=force, progress=progress, on_step=on_step)

    def render(console) -> None:
        from rich.markup import escape
        from rich.table import Table

        def pct(v):
            return "-" if v is None else f"{v:.2%}"

        def num(v, digits=4):
            return "-" if v is None else f"{v:.{digits}f}"

        t = Table(title=f"distill {escape(report['student']['source'])} from {escape(report['teacher']['source'])} "
                        f"({report['objective']}, {report['data']['train']} train / {report['data']['val']} val samples)",
                  title_justify="left")
        for col in ("epoch", "train loss", "val acc", "val loss", "cosine", "s", "best"):
            t.add_column(col, justify="left" if col == "epoch" else "right", no_wrap=True)
        tm, im = report["teacher_metrics"], report["initial_metrics"]
        t.add_row("teacher", "-", pct(tm["accuracy"]), num(tm["loss"]), num(tm["cosine"]), "-", "")
        t.add_row("student before", "-", pct(im["accuracy"]), num(im["loss"]), num(im["cosine"]), "-", "")
        for e in report["epochs"]:
            t.add_row(str(e["epoch"]), num(e["train_loss"]), pct(e["accuracy"]), num(e["loss"]), num(e["cosine"]),
                      num(e["seconds"], 1), "[green]✓[/]" if e["epoch"] == report["best_epoch"] else "")
        console.print(t)
        console.print(f"  loss: {escape(report['loss'])}"
                      + ("" if report["hidden_states"]["layers"] else f" (hidden states {escape(report['hidden_states']['why'])})"))
        ratio = report["teacher"]["parameters"] / max(1, report["student"]["parameters"])
        console.print(f"  parameters: teacher {report['teacher']['parameters']:,}, student "
                      f"{report['student']['parameters']:,} ({ratio:.1f}x fewer)")
        if report["data"]["synthetic"]:
            console.print("  [yellow]data is synthetic (random): the metrics say nothing about real inputs[/]")
        if report["best_epoch"]:
            value = report["best"][report["metric"]]
            shown = pct(value) if report["metric"] == "accuracy" else num(value)
            console.print(f"[green]✓[/] best epoch {report['best_epoch']} ({report['metric']} {shown}) -> "
                          f"{escape(report['student_file'])}")

    emit(report, as_json, render)
