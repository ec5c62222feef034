"""Distillation losses (torch): Hinton's KD on logits, label-free matching of outputs, and the hidden-state
term of a transformer student that keeps its teacher's hidden size (a pruned one: heads and MLP width cut).

:func:`hidden_match` says whether a teacher/student pair has hidden states to match, layer for layer, and
why not otherwise; :func:`hidden_state_loss` is the term itself, the mean over layers of the masked MSE (or
1 - cosine) per token; :func:`describe_loss` is the one-line description reports carry. The loop that uses
them is :func:`toolchain.training.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from toolchain.core.errors import ToolchainError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from toolchain.model.spec import LoadedModel

HIDDEN_LOSSES = ("mse", "cosine")
DEFAULT_HIDDEN_WEIGHT = 1.0  # the hidden-state weight for pairs that :func:`hidden_match` accepts; else 0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
            temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``,
    KL averaged over the batch (``batchmean``); ``alpha`` is 1 without labels. The ``T^2`` keeps the
    soft-target gradients at the scale of the hard-label ones as ``T`` changes (Hinton et al., 2015)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True) * (t * t)
    if labels is None or alpha == 1:
        return kl
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Label-free matching of outputs: ``cosine`` (mean of 1 - cosine similarity per sample) or ``mse``."""
    if student.shape != teacher.shape:
        raise ToolchainError(f"student outputs {list(student.shape)} do not match the teacher's {list(teacher.shape)}")
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise ToolchainError(f"unknown embedding loss {kind!r}; choose cosine or mse")


def _config(module: Any) -> Any:
    """The transformers config of ``module``, or of the model a DataParallel / torch.compile wrapper holds."""
    for m in (module, getattr(module, "module", None), getattr(module, "_orig_mod", None)):
        config = getattr(m, "config", None)
        if config is not None:
            return config
    return None


def transformer_shape(module: Any) -> tuple[int, int] | None:
    """``(hidden size, layers)`` of a transformer (a transformers model whose config has attention heads:
    BERT, MiniLM, DistilBERT, ViT, GPT-2; not a transformers ResNet), else None."""
    config = _config(module)
    if not getattr(config, "num_attention_heads", None):
        return None
    hidden, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    return (int(hidden), int(layers)) if hidden and layers else None


def hidden_match(teacher: LoadedModel, teacher_module: nn.Module, student: LoadedModel,
                 student_module: nn.Module) -> tuple[int, str]:
    """``(layers, why)``: the number of layers whose hidden states the student can match to the teacher's
    (0 when it cannot) and the reason, in words. Both must be transformers run with their transformers
    outputs (so ``output_hidden_states`` is there to ask for) with the same hidden size and layer count."""
    shapes = {}
    for who, loaded, module in (("teacher", teacher, teacher_module), ("student", student, student_module)):
        shape = transformer_shape(module)
        if shape is None or loaded.output_fields is None:
            why = "is not a transformer" if shape is None else "is not run as a transformers model"
            return 0, f"the {who} ({loaded.source}) {why}"
        shapes[who] = shape
    (t_hidden, t_layers), (s_hidden, s_layers) = shapes["teacher"], shapes["student"]
    if t_hidden != s_hidden:
        return 0, f"the hidden sizes differ (teacher {t_hidden}, student {s_hidden})"
    if t_layers != s_layers:
        return 0, f"the layer counts differ (teacher {t_layers}, student {s_layers})"
    return t_layers, f"transformer teacher and student, hidden size {t_hidden}, {t_layers} layers"


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None,
                      kind: str = "mse") -> torch.Tensor:
    """Mean over layers of the distance between the student's and the teacher's hidden states
    (``[batch, seq, hidden]`` each): ``mse`` (mean squared error per token) or ``cosine`` (1 - cosine
    similarity per token), averaged over the tokens the attention ``mask`` ``[batch, seq]`` keeps (all tokens
    without one)."""
    if kind not in HIDDEN_LOSSES:
        raise ToolchainError(f"unknown hidden-state loss {kind!r}; choose {' or '.join(HIDDEN_LOSSES)}")
    if not student or len(student) != len(teacher):
        raise ToolchainError(f"the student gives {len(student)} hidden states, the teacher {len(teacher)}")
    total = torch.zeros((), device=student[0].device)
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ToolchainError(f"student hidden states {list(s.shape)} do not match the teacher's {list(t.shape)}")
        s, t = s.float(), t.to(s.device).float()
        per_token = ((s - t) ** 2).mean(-1) if kind == "mse" else 1 - F.cosine_similarity(s, t, dim=-1)
        if mask is not None and tuple(mask.shape) == tuple(per_token.shape):
            m = mask.to(per_token.device, per_token.dtype)
            total = total + (per_token * m).sum() / m.sum().clamp(min=1)
        else:
            total = total + per_token.mean()
    return total / len(student)


def describe_loss(objective: str, *, temperature: float, alpha: float, hidden_weight: float = 0.0,
                  hidden_loss: str = "mse", layers: int = 0) -> str:
    """The loss of a run in words: ``logits KD T=4 alpha=0.7 + hidden-state MSE x 1 over 6 layers``."""
    base = {"ce": "cross-entropy on the labels", "kd": f"logits KD T={temperature:g} alpha={alpha:g}",
            "kl": f"logits KD T={temperature:g} (no labels)", "mse": "output MSE",
            "cosine": "output cosine"}.get(objective, objective)
    if hidden_weight and layers:
        base += f" + hidden-state {hidden_loss.upper() if hidden_loss == 'mse' else hidden_loss} x {hidden_weight:g} over {layers} layers"
    return base


__all__ = ["DEFAULT_HIDDEN_WEIGHT", "HIDDEN_LOSSES", "describe_loss", "embedding_loss", "hidden_match",
           "hidden_state_loss", "kd_loss", "transformer_shape"]
