"""Fine-tuning a classifier (the catalogue's minilm-bbc): deterministic, cached, keyed by what sets the weights.

Runs on a tiny BERT (vocabulary 1000, hidden 64, 2 layers) and a handful of texts; the real MiniLM
fine-tune is never run here."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from toolchain.model import finetune
from toolchain.model.finetune import FinetuneConfig, finetune_classifier, read_result, weights_hash

WORDS = ["market", "shares", "profit", "film", "award", "actor", "election", "minister", "vote",
         "match", "goal", "coach", "software", "phone", "internet"]
TEXTS = [" ".join(WORDS[(3 * (i % 5) + j) % len(WORDS)] for j in range(3 + i % 4)) for i in range(20)]
LABELS = np.array([i % 5 for i in range(20)], dtype=np.int64)
TINY = FinetuneConfig(epochs=2, batch_size=4, lr=1e-3, max_length=16, seed=0, eval_batch_size=8)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny BERT and a word-level tokenizer, saved as a transformers model directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    base = tmp_path_factory.mktemp("tiny-base")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (base / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(base / "vocab.txt")).save_pretrained(str(base))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(base))
    return base


def _tune(base, root, config=TINY):
    return finetune_classifier(base, TEXTS, LABELS, 5, config, name="tiny", root=root,
                               evaluate={"train": (TEXTS, LABELS)})


@pytest.fixture(scope="module")
def tuned(tiny_base, tmp_path_factory):
    """The tiny model fine-tuned once, into a cache of its own."""
    return _tune(tiny_base, tmp_path_factory.mktemp("cache-a"))


def test_finetune_is_deterministic_and_cached(tiny_base, tuned, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache-b"))
    with caplog.at_level(logging.INFO, logger="toolchain.progress"):
        b = _tune(tiny_base, None)  # a second, separate run; root from $TOOLCHAIN_CACHE
    assert b.parent == tmp_path / "cache-b" and b.name.startswith("tiny-")
    assert any("fine-tuning tiny: epoch 2/2" in r.getMessage() for r in caplog.records)
    a = tuned
    assert a.name == b.name  # the same key ...
    assert weights_hash(a) == weights_hash(b)  # ... and bit-identical weights from a second, separate run
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    result = read_result(a)
    assert result["weights_sha256"] == weights_hash(a) and result["train_size"] == len(TEXTS)
    assert 0.0 <= result["accuracy"]["train"] <= 1.0
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache holds the model")

    monkeypatch.setattr(finetune, "_train", no_training)
    assert _tune(tiny_base, None) == b
    assert _tune(tiny_base, a.parent) == a


def test_seed_changes_key_and_weights(tiny_base, tuned, tmp_path):
    other = _tune(tiny_base, tmp_path, FinetuneConfig(**{**TINY.__dict__, "seed": 1}))
    assert other.name != tuned.name and weights_hash(other) != weights_hash(tuned)


def test_cached_dir_loads_as_a_sequence_classifier(tuned):
    import torch

    from toolchain.model.forward import make_inputs, run_torch
    from toolchain.model.hf import load_hf_dir

    loaded = load_hf_dir(tuned, "sequence-classification")
    assert loaded.kind == "pretrained" and loaded.output_names == ["logits"]
    out = run_torch(loaded, make_inputs(loaded, batch=2, seq_len=8))
    assert tuple(torch.as_tensor(out[0]).shape) == (2, 5)


def test_cache_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TOOLCHAIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert finetune.cache_root() == tmp_path / "xdg" / "toolchain"
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "tc"))
    assert finetune.cache_root() == tmp_path / "tc"
    monkeypatch.delenv("TOOLCHAIN_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert finetune.cache_root() == tmp_path / "home" / ".cache" / "toolchain"
