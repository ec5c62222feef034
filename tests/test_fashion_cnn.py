"""The catalogue's fashion-cnn: trained here, deterministic, cached under a key of what sets the weights.

Trains on a tiny synthetic set (64 images, a few steps); the real Fashion-MNIST training is never run here.
Tests that read Debian's dataset-fashion-mnist skip where it is absent."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from toolchain.core.errors import ToolchainError
from toolchain.core.fsio import sha256_file
from toolchain.data import readers
from toolchain.model import fashion
from toolchain.model.fashion import (
    PREPROCESSING,
    RESULT_FILE,
    WEIGHTS_FILE,
    FashionConfig,
    fashion_key,
    load_fashion_dir,
    normalise,
    read_result,
    train_fashion_cnn,
)

# 48 of the 64 images drawn by the seed, 2 epochs of 2 steps: few steps, as each costs the same on a busy machine
TINY = FashionConfig(train_size=48, epochs=2, batch_size=24, lr=2e-3, seed=0, eval_batch_size=64)
HAS_FASHION = (readers.FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed "
                                                           "(apt-get install dataset-fashion-mnist)")


def _tiny_data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose brightest band tells the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 10
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 4:2 * c + 7, :] = 250
    return images, labels


IMAGES, LABELS = _tiny_data()


def _train(root, config=TINY, images=IMAGES, labels=LABELS):
    return train_fashion_cnn(images, labels, config, root=root, evaluate={"train": (images, labels)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny case trained once, into a cache of its own."""
    return _train(tmp_path_factory.mktemp("cache-a"))


def _state(model_dir):
    import torch

    return torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)


def test_training_is_deterministic_and_cached(trained, tmp_path, monkeypatch, caplog):
    import torch

    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache-b"))
    threads = torch.get_num_threads()
    rng_before = torch.random.get_rng_state()
    with caplog.at_level(logging.INFO, logger="toolchain.progress"):
        b = _train(None)  # a second, separate run; root from $TOOLCHAIN_CACHE
    assert b.parent == tmp_path / "cache-b" and b.name.startswith("fashion-cnn-")
    assert any("training fashion-cnn: epoch 2/2 done" in r.getMessage() for r in caplog.records)
    assert torch.get_num_threads() == threads  # restored after training
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    a = trained
    assert a.name == b.name  # the same key ...
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # ... and identical weights
    assert read_result(a)["weights_sha256"] == read_result(b)["weights_sha256"] == sha256_file(b / WEIGHTS_FILE)

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although cached")

    monkeypatch.setattr(fashion, "_train", no_training)
    assert _train(None) == b  # cached: returned without training
    assert not [p for p in b.parent.iterdir() if p.name.startswith(".")]  # no scratch left behind


def test_result_records_settings_and_accuracy(trained):
    result = read_result(trained)
    assert result["config"] == json.loads(json.dumps(TINY.__dict__))
    assert result["train_size"] == 48 and result["eval_sizes"] == {"train": 64}  # a subset; evaluated on all
    assert len(result["epoch_losses"]) == 2 and result["epoch_losses"][1] < result["epoch_losses"][0]
    assert 0.0 <= result["accuracy"]["train"] <= 1.0
    assert result["preprocessing"] == PREPROCESSING and result["train_seconds"] >= 0
    assert (trained / RESULT_FILE).is_file() and (trained / WEIGHTS_FILE).is_file()


def test_key_follows_data_settings_and_architecture(monkeypatch):
    base = fashion_key(IMAGES, LABELS, TINY)
    assert fashion_key(IMAGES.copy(), LABELS.copy(), TINY) == base
    flipped = IMAGES.copy()
    flipped[0, 0, 0] ^= 1
    assert fashion_key(flipped, LABELS, TINY) != base
    assert fashion_key(IMAGES, np.roll(LABELS, 1), TINY) != base
    assert fashion_key(IMAGES, LABELS, FashionConfig(**{**TINY.__dict__, "seed": 1})) != base
    assert fashion_key(IMAGES, LABELS, FashionConfig(**{**TINY.__dict__, "lr": 1e-3})) != base
    monkeypatch.setattr(fashion, "architecture_source", lambda: "def make_fashion_cnn(): ...")
    assert fashion_key(IMAGES, LABELS, TINY) != base


def test_bad_data_is_one_clear_error(tmp_path):
    with pytest.raises(ToolchainError, match="uint8 images"):
        train_fashion_cnn(IMAGES[:, :14], LABELS, TINY, root=tmp_path)
    with pytest.raises(ToolchainError, match="labels must lie"):
        train_fashion_cnn(IMAGES, LABELS + 10, TINY, root=tmp_path)


def test_loaded_model_runs_and_carries_the_readers_preprocessing(trained):
    import torch

    loaded = load_fashion_dir(trained)
    assert loaded.kind == "pretrained" and loaded.source == "fashion-cnn" and loaded.task == "image-classification"
    assert loaded.output_names == ["logits"] and loaded.inputs[0].shape == (1, 1, 28, 28)
    assert loaded.source_hash == sha256_file(trained / WEIGHTS_FILE)
    assert loaded.preprocessing == {"scale": 1 / 255, "mean": [0.2860], "std": [0.3530], "size": 28}
    assert "trained here" in loaded.description and not loaded.module.training
    with torch.inference_mode():
        logits = loaded.module(torch.from_numpy(normalise(IMAGES[:3])))
    assert logits.shape == (3, 10)


def test_normalisation_is_the_readers(trained):
    from toolchain.data.dataset import DataOptions

    meta = {"toolchain.preprocessing": json.dumps(load_fashion_dir(trained).preprocessing)}
    mean, std = readers.normalisation(meta, DataOptions(), 1)
    x = (IMAGES.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    assert np.array_equal(normalise(IMAGES), ((x - mean) / std).astype(np.float32))


def test_missing_debian_data_is_one_clear_error(tmp_path, monkeypatch):
    original = readers.fashion_mnist
    monkeypatch.setattr(readers, "fashion_mnist", lambda split="train": original(split, root=tmp_path))
    with pytest.raises(ToolchainError) as err:
        fashion.fashion_cnn_dir(root=tmp_path / "cache")
    assert "apt-get install dataset-fashion-mnist" in (err.value.hint or "")
    assert not (tmp_path / "cache").exists()


def test_catalogue_lists_fashion_cnn():
    from toolchain.model.catalogue import catalogue_index

    entry = catalogue_index()["fashion-cnn"]
    assert entry.kind == "pretrained" and entry.modality == "vision" and "trained here" in entry.description


@needs_fashion
def test_real_data_reads_as_the_builtin_data_set():
    from toolchain.core.onnxfile import ModelInput
    from toolchain.data.dataset import DataOptions

    images, labels = readers.fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8 and labels.shape == (60000,)
    meta = {"toolchain.preprocessing": json.dumps(PREPROCESSING)}  # what an exported fashion-cnn carries
    ds = readers.read_fashion([ModelInput("pixel_values", (1, 1, 28, 28), "float32")], meta, DataOptions(), "train")
    assert np.array_equal(ds.feeds["pixel_values"][:100], normalise(images[:100]))
    assert np.array_equal(ds.labels, labels)
    pixels = images[:5000].astype(np.float64) / 255  # the statistics in PREPROCESSING are the training set's
    assert abs(pixels.mean() - PREPROCESSING["mean"][0]) < 0.01 and abs(pixels.std() - PREPROCESSING["std"][0]) < 0.01
