"""Training utilities shared by distillation and pruning: one forward convention, metrics, losses, a loop.

Every model is run the way it is exported (:func:`toolchain.models.export_module`): positional tensors in
``loaded.inputs`` order, the first output kept. A 3-D output ``[batch, seq, hidden]`` (a transformer's last
hidden state) is mean-pooled over the attention mask into a sentence embedding, so every model gives a
2-D ``[batch, features]`` tensor: class logits, or an embedding.

:func:`train` fine-tunes a module with one of five objectives, chosen by :func:`objective_for`:

* ``ce``: cross-entropy on the labels (no teacher);
* ``kd``: Hinton's distillation loss against a teacher's logits plus cross-entropy (:func:`kd_loss`);
* ``kl``: the KD term alone (logits without labels);
* ``mse`` / ``cosine``: label-free matching of the teacher's outputs (embeddings, or logits if asked).

With ``hidden_weight`` (a transformer teacher and student of the same hidden size and depth, see
:func:`toolchain.losses.hidden_match`) the loss adds ``hidden_weight`` times the distance between their
hidden states of every layer (:func:`toolchain.losses.hidden_state_loss`), asked of the models with
``output_hidden_states=True``; the teacher's are computed per batch, in eval mode, without grad.

Runs are deterministic for a seed: each epoch shuffles with ``torch.Generator().manual_seed(f(seed, epoch))``
and reseeds the (forked) global RNG that dropout draws from, so epoch ``k`` depends only on the weights,
the optimizer and scheduler states after epoch ``k - 1`` and the seed: exactly what a checkpoint holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.core.errors import ToolchainError, one_line, option
from toolchain.data.dataset import Dataset
from toolchain.losses import HIDDEN_LOSSES, embedding_loss, hidden_match, hidden_state_loss, kd_loss
from toolchain.model.forward import export_module
from toolchain.model.spec import LoadedModel

OBJECTIVES = ("ce", "kd", "kl", "mse", "cosine")
LABEL_FREE = ("kl", "mse", "cosine")


# --------------------------------------------------------------------------------------------------
# running a model


def to_torch(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Numpy arrays to CPU tensors (sharing memory where the array is contiguous)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


def _args(loaded: LoadedModel, module: nn.Module, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The model's positional inputs: by name, else (same count) in the feeds' order, on the module's device."""
    names = [s.name for s in loaded.inputs]
    if all(n in feeds for n in names):
        args = [feeds[n] for n in names]
    elif len(feeds) == len(names):
        args = list(feeds.values())
    else:
        raise ToolchainError(f"{loaded.source} takes {', '.join(names)}; the data has {', '.join(feeds)}")
    param = next(module.parameters(), None)
    return [a.to(param.device) for a in args] if param is not None and param.device.type != "cpu" else args


def _call(loaded: LoadedModel, module: nn.Module, feeds: dict[str, torch.Tensor],
          hidden: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, list[torch.Tensor]]:
    """``module`` run through the export wrapper: its first output (float), with ``hidden`` the hidden states
    (transformers ``output_hidden_states=True``: the embeddings, then every layer), and the positional args."""
    modes = [(m, m.training) for m in module.modules()]
    view = dataclasses.replace(loaded, module=module)
    if hidden:  # the output fields gain hidden_states; the wrapper (module under .model) is unchanged
        view = dataclasses.replace(view, output_fields=[*(loaded.output_fields or []), "hidden_states"],
                                   call_kwargs={**loaded.call_kwargs, "output_hidden_states": True})
    wrapper = export_module(view)  # puts every submodule in eval mode
    for m, mode in modes:
        m.training = mode
    args = _args(loaded, module, feeds)
    result = wrapper(*args)
    return result[0].float(), (tuple(result[-1]) if hidden else None), args


def _mask(loaded: LoadedModel, args: list[torch.Tensor]) -> torch.Tensor | None:
    index = next((i for i, s in enumerate(loaded.inputs) if s.role == "mask"), None)
    return args[index] if index is not None and index < len(args) else None


def _pool(loaded: LoadedModel, out: torch.Tensor, args: list[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """The output as ``[batch, features]``, and whether it was pooled from ``[batch, seq, hidden]``."""
    if out.dim() == 3:
        mask = _mask(loaded, args)
        if mask is not None:
            mask = mask.to(out.dtype).unsqueeze(-1)
            return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9), True
        return out.mean(1), True
    if out.dim() == 1:
        return out.unsqueeze(1), False
    return (out.flatten(1) if out.dim() > 2 else out), False


def _run(loaded: LoadedModel, module: nn.Module, feeds: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """The first output as float ``[batch, features]``, and whether it was pooled from ``[batch, seq, hidden]``."""
    out, _, args = _call(loaded, module, feeds)
    return _pool(loaded, out, args)


def hidden_states(loaded: LoadedModel, module: nn.Module, feeds: dict[str, torch.Tensor],
                  layers: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
    """:func:`forward`'s output, the hidden states of the last ``layers`` layers (a transformers model: asked
    with ``output_hidden_states=True``) and the attention mask (None without one); grad and modes as given."""
    out, hidden, args = _call(loaded, module, feeds, hidden=True)
    return _pool(loaded, out, args)[0], hidden[-layers:], _mask(loaded, args)


def forward(loaded: LoadedModel, module: nn.Module, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    """``module`` run as ``loaded`` describes it (``loaded.module`` is ignored): its first output, with a
    ``[batch, seq, hidden]`` output mean-pooled over the attention mask (plain mean over axis 1 when the
    model has no mask input). Keeps the module's train/eval mode and autograd, so it serves training."""
    return _run(loaded, module, feeds)[0]


def _outputs(loaded: LoadedModel, module: nn.Module, data: Dataset, batch_size: int) -> tuple[torch.Tensor, bool]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    outs, pooled = [], False
    try:
        with torch.no_grad():
            for batch in data.batches(batch_size):
                out, pooled = _run(loaded, module, to_torch(batch))
                outs.append(out.cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    return torch.cat(outs), pooled


def outputs(loaded: LoadedModel, module: nn.Module, data: Dataset, batch_size: int = 256) -> torch.Tensor:
    """:func:`forward` over the whole data set in eval mode without grad, concatenated on the CPU (the
    module's modes are restored afterwards)."""
    return _outputs(loaded, module, data, batch_size)[0]



# --------------------------------------------------------------------------------------------------
# metrics


@dataclass
class Metrics:
    """Evaluation of a module on a data set: top-1 ``accuracy`` (labelled data, logits), mean ``cosine`` of
    the outputs against a reference (the teacher's or unpruned model's outputs), ``loss`` (cross-entropy
    on the labels, where accuracy is defined), ``samples``; ``train_loss`` is the mean training loss of
    the epoch when the metrics come from :func:`train`."""

    accuracy: float | None
    cosine: float | None
    loss: float | None
    samples: int
    train_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_logits(out: torch.Tensor, pooled: bool) -> bool:
    return not pooled and out.dim() == 2 and out.shape[1] > 1


def evaluate(loaded: LoadedModel, module: nn.Module, data: Dataset, *, reference: torch.Tensor | None = None,
             batch_size: int = 256) -> Metrics:
    """Accuracy and cross-entropy when ``data`` has labels and the model gives logits; mean cosine against
    ``reference`` (outputs of the reference model on the same samples, same order) when given."""
    out, pooled = _outputs(loaded, module, data, batch_size)
    accuracy = loss = cosine = None
    if data.labels is not None and _is_logits(out, pooled):
        labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        _check_labels(labels, out.shape[1], data.source)
        accuracy = (out.argmax(1) == labels).float().mean().item()
        loss = F.cross_entropy(out, labels).item()
    if reference is not None:
        if tuple(reference.shape) != tuple(out.shape):
            raise ToolchainError(f"reference outputs {list(reference.shape)} do not match the model's {list(out.shape)}")
        cosine = F.cosine_similarity(out, reference.float().cpu(), dim=1).mean().item()
    return Metrics(accuracy=accuracy, cosine=cosine, loss=loss, samples=len(data))


def _check_labels(labels: torch.Tensor, classes: int, source: str) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ToolchainError(f"{source}: labels run from {int(labels.min())} to {int(labels.max())} but the model "
                             f"has {classes} classes")


# --------------------------------------------------------------------------------------------------
# the training loop


def _probe(loaded: LoadedModel, module: nn.Module, data: Dataset, who: str) -> tuple[torch.Tensor, bool]:
    """Run ``module`` on two samples (eval mode, no grad): one clear error when it cannot take the data."""
    try:
        return _outputs(loaded, module, data.take(0, 2), 2)
    except ToolchainError:
        raise
    except Exception as exc:
        raise ToolchainError(f"the {who} ({loaded.source}) cannot run on {data.source} ({one_line(exc)})") from None


def objective_for(loaded: LoadedModel, module: nn.Module, data: Dataset, *, teacher: nn.Module | None = None,
                  teacher_loaded: LoadedModel | None = None, label_free: str | None = None) -> str:
    """The objective :func:`train` uses (one of :data:`OBJECTIVES`), after checking that the models run on
    the data and fit each other; raises one clear :class:`ToolchainError` otherwise.

    Without a teacher: ``ce`` (labels and logits needed). With one: ``label_free`` if given; else ``kd``
    for logits with labels, ``kl`` for logits without, ``cosine`` for embeddings."""
    if label_free is not None and label_free not in LABEL_FREE:
        raise ToolchainError(f"unknown label-free loss {label_free!r}; choose {', '.join(LABEL_FREE)}")
    out, pooled = _probe(loaded, module, data, "student" if teacher is not None else "model")
    logits = _is_logits(out, pooled)
    if teacher is None:
        if label_free is not None:
            raise ToolchainError(f"{option(f'--label-free {label_free}', f'label_free={label_free!r}')} needs a teacher to match")
        if data.labels is None:
            raise ToolchainError(f"{data.source} has no labels; training without a teacher needs labels",
                                 hint="give a teacher to distill label-free")
        if not logits:
            raise ToolchainError(f"{loaded.source} gives {list(out.shape[1:])} outputs, not class logits; "
                                 "training on labels needs [batch, classes]")
        _check_labels(torch.from_numpy(np.asarray(data.labels)), out.shape[1], data.source)
        return "ce"
    t_out, t_pooled = _probe(teacher_loaded or loaded, teacher, data, "teacher")
    if t_out.shape[1:] != out.shape[1:]:
        what = "classes" if logits and _is_logits(t_out, t_pooled) else "features"
        raise ToolchainError(f"the teacher gives {t_out.shape[1]} {what} per sample, the student {out.shape[1]}; "
                             "distillation needs outputs of the same shape")
    if label_free == "kl" and not logits:
        raise ToolchainError(option("--label-free kl", "label_free='kl'") + " needs class logits; these models give embeddings",
                             hint="use " + option("--label-free mse", "label_free='mse'") + " or cosine")
    if label_free is not None:
        return label_free
    if not logits:
        return "cosine"
    if data.labels is None:
        return "kl"
    _check_labels(torch.from_numpy(np.asarray(data.labels)), out.shape[1], data.source)
    return "kd"


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch; a trailing batch of one sample is dropped (BatchNorm cannot train on it)."""
    parts = list(torch.randperm(n, generator=generator).split(batch_size))
    return parts[:-1] if len(parts) > 1 and len(parts[-1]) == 1 else parts


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``samples`` (the cosine schedule spans ``epochs`` times this)."""
    full, rest = divmod(samples, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def train(loaded: LoadedModel, module: nn.Module, data: Dataset, *, epochs: int, lr: float = 1e-3,
          batch_size: int = 64, teacher: nn.Module | None = None, teacher_loaded: LoadedModel | None = None,
          temperature: float = 4.0, alpha: float = 0.7, label_free: str | None = None, weight_decay: float = 0.01,
          seed: int = 0, progress: Callable[[str], None] | None = None, val: Dataset | None = None,
          val_reference: torch.Tensor | None = None, on_epoch: Callable[[int, Metrics], None] | None = None,
          on_step: Callable[[int, int, int, float], None] | None = None,
          checkpoint: Callable[[dict[str, Any]], None] | None = None,
          resume_from: dict[str, Any] | None = None, hidden_weight: float = 0.0,
          hidden_loss: str = "mse") -> list[Metrics]:
    """Train ``module`` (run as ``loaded`` describes) on ``data`` for ``epochs``; return per-epoch metrics.

    AdamW with a cosine schedule over all steps. The objective comes from :func:`objective_for`; the
    teacher (run as ``teacher_loaded``, default ``loaded``) is put in eval mode and its outputs on ``data``
    are computed once, without grad. Each epoch's metrics are :func:`evaluate` on ``val`` (cosine against
    ``val_reference``, by default the teacher's outputs on ``val``) plus ``train_loss``; without ``val``,
    only ``train_loss`` and ``samples``.

    Hooks: ``progress(text)`` and ``on_step(epoch, step, steps, loss)`` per step; after each epoch
    ``checkpoint(state)`` (``epoch``, ``epochs``, ``model``, ``optimizer``, ``scheduler``, ``history``,
    ``objective``, ``seed``: live tensors, save them at once), then ``on_epoch(epoch, metrics)``; epochs
    count from 1. ``resume_from`` (such a state) continues after its epoch and gives the same result as an
    uninterrupted run with the same arguments. The module is left in eval mode.

    ``hidden_weight`` > 0 adds that times the ``hidden_loss`` (``mse`` or ``cosine``) between the student's
    and the teacher's hidden states of every layer; the pair must pass :func:`~toolchain.losses.hidden_match`.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ToolchainError("epochs, batch size and learning rate must be positive")
    if not 0 <= alpha <= 1 or temperature <= 0:
        raise ToolchainError("alpha must lie in [0, 1] and the temperature be positive")
    if len(data) < 2:
        raise ToolchainError(f"{data.source}: training needs at least 2 samples")
    if not hidden_weight >= 0 or hidden_weight == float("inf") or hidden_loss not in HIDDEN_LOSSES:
        raise ToolchainError(f"the hidden-state weight must be a finite number >= 0 and its loss {' or '.join(HIDDEN_LOSSES)}")
    teacher_loaded = teacher_loaded or loaded
    layers = 0
    if hidden_weight:
        layers, why = hidden_match(teacher_loaded, teacher, loaded, module) if teacher is not None else (0, "no teacher")
        if not layers:
            raise ToolchainError(f"a hidden-state term needs a transformer teacher and student of the same hidden "
                                 f"size and layer count: {why}", hint=f"{option('--hidden-weight 0', 'hidden_weight=0')} leaves it out")
    say = progress or (lambda _text: None)
    objective = objective_for(loaded, module, data, teacher=teacher, teacher_loaded=teacher_loaded,
                              label_free=label_free)
    labels = None if data.labels is None else torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    targets = None
    if teacher is not None:
        teacher.eval()
        say(f"teacher outputs on {len(data)} samples")
        targets = outputs(teacher_loaded, teacher, data)
        if val is not None and val_reference is None:
            val_reference = outputs(teacher_loaded, teacher, val)

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ToolchainError(f"{loaded.source} has no trainable parameters")
    steps = steps_per_epoch(len(data), batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps))
    history: list[Metrics] = []
    start = 0
    if resume_from is not None:
        start = int(resume_from["epoch"])
        if start > epochs:
            raise ToolchainError(f"the checkpoint is at epoch {start}, past the {epochs} asked for")
        module.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        history = [Metrics(**m) for m in resume_from["history"]]

    def output_loss(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if objective == "ce":
            return F.cross_entropy(out, labels[idx].to(out.device))
        target = targets[idx].to(out.device)
        if objective in ("kd", "kl"):
            batch_labels = labels[idx].to(out.device) if objective == "kd" else None
            return kd_loss(out, target, batch_labels, temperature=temperature, alpha=alpha)
        return embedding_loss(out, target, objective)

    def loss_of(batch_feeds: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        if not layers:
            return output_loss(forward(loaded, module, batch_feeds), idx)
        out, hidden, mask = hidden_states(loaded, module, batch_feeds, layers)
        with torch.no_grad():  # the teacher is in eval mode: the same states in every run
            _, target, _ = hidden_states(teacher_loaded, teacher, batch_feeds, layers)
        return output_loss(out, idx) + hidden_weight * hidden_state_loss(hidden, target, mask, hidden_loss)

    try:
        cuda = sorted({p.device.index or 0 for p in params if p.is_cuda})
        with torch.random.fork_rng(devices=cuda):
            for epoch in range(start + 1, epochs + 1):
                epoch_seed = _epoch_seed(seed, epoch)
                torch.manual_seed(epoch_seed)  # dropout
                module.train()
                total, seen = 0.0, 0
                for step, idx in enumerate(_batches(len(data), batch_size, torch.Generator().manual_seed(epoch_seed)), 1):
                    feeds = to_torch({k: v[idx.numpy()] for k, v in data.feeds.items()})
                    loss = loss_of(feeds, idx)
                    if not torch.isfinite(loss):
                        raise ToolchainError(f"the training loss became {loss.item()} at epoch {epoch}, step {step}",
                                             hint="lower the learning rate")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    total += loss.item() * len(idx)
                    seen += len(idx)
                    say(f"epoch {epoch}/{epochs}, step {step}/{steps}, loss {loss.item():.4f}")
                    if on_step:
                        on_step(epoch, step, steps, loss.item())
                module.eval()
                if val is not None:
                    metrics = evaluate(loaded, module, val, reference=val_reference)
                else:
                    metrics = Metrics(accuracy=None, cosine=None, loss=None, samples=len(data))
                metrics.train_loss = total / max(seen, 1)
                history.append(metrics)
                if checkpoint:
                    checkpoint({"epoch": epoch, "epochs": epochs, "model": module.state_dict(),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "history": [m.to_dict() for m in history], "objective": objective, "seed": seed})
                if on_epoch:
                    on_epoch(epoch, metrics)
    finally:
        module.eval()
    return history


__all__ = ["OBJECTIVES", "Metrics", "to_torch", "forward", "hidden_states", "outputs", "evaluate", "kd_loss",
           "embedding_loss", "objective_for", "steps_per_epoch", "train"]
