"""transformers models: the head for a task, a model directory on disk (weights from disk only, a missing
head labelled ``partly-random``), and the input/output description of a transformers module."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolchain.core.errors import ToolchainError, option
from toolchain.core.errors import one_line as _one_line
from toolchain.core.fsio import sha256_files
from toolchain.model.spec import InputSpec, LoadedModel

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


def auto_class(task: str):
    import transformers as tf

    return {
        "feature-extraction": tf.AutoModel,
        "sequence-classification": tf.AutoModelForSequenceClassification,
        "image-classification": tf.AutoModelForImageClassification,
        "causal-lm": tf.AutoModelForCausalLM,
        "masked-lm": tf.AutoModelForMaskedLM,
    }[task]


def _infer_task(config: Any) -> str:
    arch = " ".join(getattr(config, "architectures", None) or [])
    for marker, task in (("ForSequenceClassification", "sequence-classification"),
                         ("ForImageClassification", "image-classification"), ("LMHeadModel", "causal-lm"),
                         ("ForCausalLM", "causal-lm"), ("ForMaskedLM", "masked-lm")):
        if marker in arch:
            return task
    return "image-classification" if _is_vision(config) else "feature-extraction"


def _is_vision(config: Any) -> bool:
    return hasattr(config, "num_channels") and not hasattr(config, "vocab_size")


def hf_loaded(module: nn.Module, config: Any, task: str, *, source: str, kind: str, description: str,
               source_hash: str, model_dir: str | None = None) -> LoadedModel:
    """Describe the inputs and outputs of a transformers model for ``task``."""
    module.eval()
    if _is_vision(config):
        size = getattr(config, "image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        inputs = vision_inputs(config.num_channels, int(size))
        call_kwargs: dict[str, Any] = {}
    else:
        params = inspect.signature(module.forward).parameters
        seq = {0: "batch", 1: "sequence"}
        vocab = int(config.vocab_size)
        inputs = [InputSpec("input_ids", (2, 16), "int64", seq, "ids", vocab),
                  InputSpec("attention_mask", (2, 16), "int64", seq, "mask", 2)]
        if "token_type_ids" in params and getattr(config, "type_vocab_size", 0):
            inputs.append(InputSpec("token_type_ids", (2, 16), "int64", seq, "type_ids", int(config.type_vocab_size)))
        call_kwargs = {"use_cache": False} if "use_cache" in params else {}
    fields = {"feature-extraction": ["last_hidden_state"]}.get(task, ["logits"])
    return LoadedModel(module=module, inputs=inputs, output_names=list(fields), source=source, kind=kind,
                       description=description, source_hash=source_hash, task=task, output_fields=fields,
                       call_kwargs=call_kwargs, model_dir=model_dir, model_type=config.model_type)


def load_hf_dir(path: Path, task: str) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: weights come from disk only
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our commands draw their own progress on stderr
    hf_logging.set_verbosity_error()  # missing weights are reported by us, as a kind, not as a log dump

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ToolchainError(f"{path}: not a readable transformers model directory ({_one_line(exc)})") from None
    if task == "auto":
        task = _infer_task(config)
    try:
        kwargs = {"attn_implementation": "sdpa"} if supports_sdpa(config) else {}
        module, info = auto_class(task).from_pretrained(str(path), local_files_only=True, output_loading_info=True,
                                                         **kwargs)
    except Exception as exc:
        raise ToolchainError(f"{path}: cannot load as {task} ({_one_line(exc)})",
                             hint=f"pick another {option('--task', 'task')}") from None
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    missing = list(info.get("missing_keys") or [])
    # a head the checkpoint lacks (e.g. --task sequence-classification on a bare encoder) is random: say so
    kind = "partly-random" if missing else "pretrained"
    description = f"{config.model_type} model from {path} ({task})"
    if missing:
        description += f"; {len(missing)} tensors not in the checkpoint are random (e.g. {missing[0]})"
    loaded = hf_loaded(module, config, task, source=str(path), kind=kind, description=description,
                        source_hash=sha256_files(weights), model_dir=str(path))
    loaded.input_paths = [str(path)]
    return loaded


def vision_inputs(channels: int, size: int) -> list[InputSpec]:
    return [InputSpec("pixel_values", (1, channels, size, size), "float32", {0: "batch"})]


def supports_sdpa(config: Any) -> bool:
    return config.model_type in ("bert", "distilbert", "gpt2", "vit")


# transformers model types whose eager attention ONNX Runtime's BERT optimizer fuses into Attention nodes,
# once exported by the TorchScript exporter (the dynamo exporter writes the attention mask as GatherND,
# a pattern the optimizer does not know). Measured on all-MiniLM-L6-v2 (transformers 5, onnxruntime
# 1.32): TorchScript + eager gives 6 Attention, 12 SkipLayerNormalization, 6 BiasGelu; SDPA attention
# (either exporter) or the dynamo exporter give no Attention node.
FUSED_ATTENTION_TYPES = ("bert", "distilbert", "roberta")


def fuses_attention(module: Any) -> bool:
    """Whether ``module`` is a transformers model whose attention ORT's optimizer fuses when exported
    with eager attention (:data:`FUSED_ATTENTION_TYPES`)."""
    config = getattr(module, "config", None)
    return (getattr(config, "model_type", None) in FUSED_ATTENTION_TYPES
            and callable(getattr(module, "set_attn_implementation", None)))


@contextmanager
def eager_attention(module: Any) -> Iterator[bool]:
    """Within the block, ``module`` (a transformers model of :data:`FUSED_ATTENTION_TYPES`) computes attention
    eagerly (MatMul, Softmax, MatMul) instead of with SDPA, the graph ORT's attention fusion recognises; the
    previous implementation is restored on leaving. Yields whether it switched (other modules are left alone)."""
    if not fuses_attention(module):
        yield False
        return
    before = module.config._attn_implementation
    try:
        module.set_attn_implementation("eager")
    except Exception:  # a model that cannot switch is exported as it is
        yield False
        return
    try:
        yield True
    finally:
        module.set_attn_implementation(before)


def attention_shape(module: Any) -> dict[str, int]:
    """``num_heads`` and ``hidden_size`` of a transformers model (what ORT's attention fusion needs when the
    graph computes its reshapes at run time), or ``{}`` when the config does not say, or when its attention
    blocks no longer agree with it: a pruned model whose layers kept different numbers of heads cannot be
    described by one pair (a wrong pair fuses attention that computes wrong outputs)."""
    config = getattr(module, "config", None)
    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if not (isinstance(heads, int) and isinstance(hidden, int)):
        return {}
    blocks = [m for m in module.modules() if hasattr(m, "num_attention_heads") and hasattr(m, "attention_head_size")
              and m is not module]
    kept = {(int(m.num_attention_heads), int(m.attention_head_size)) for m in blocks}
    if not kept or kept == {(heads, hidden // heads)}:
        return {"num_heads": heads, "hidden_size": hidden}
    if len(kept) == 1:  # every layer pruned alike: the heads left, and the width they span
        (h, size), = kept
        return {"num_heads": h, "hidden_size": h * size}
    return {}
