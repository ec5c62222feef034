"""Calibration/evaluation data readers and their checks against the model's inputs."""

from __future__ import annotations

import numpy as np
import pytest

from toolchain.core.errors import ToolchainError
from toolchain.core.onnxfile import model_inputs
from toolchain.data.dataset import DataOptions
from toolchain.data.load import load_dataset
from toolchain.data.readers import drug_reviews


def test_model_inputs_have_symbolic_batch(mnist_cnn):
    _, result = mnist_cnn
    (inp,) = model_inputs(result.path)
    assert inp.name == "pixel_values" and inp.shape[1:] == (1, 28, 28) and isinstance(inp.shape[0], str)


def test_builtin_mnist_is_shuffled_normalised_and_labelled(mnist_cnn):
    _, result = mnist_cnn
    ds = load_dataset("builtin:mnist", result.path, DataOptions(samples=200))
    assert len(ds) == 200 and ds.feeds["pixel_values"].shape == (200, 1, 28, 28)
    assert len(set(ds.labels.tolist())) == 10  # the file is sorted by digit; the loader shuffles
    x = ds.feeds["pixel_values"]
    assert x.min() == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-5)  # the model's own normalisation
    # a subset of MNIST's training set, and it says so through every split
    assert ds.subset_of == "MNIST's training set" and ds.take(0, 10).subset_of == ds.subset_of


def test_npz_round_trip_and_mismatches(mnist_cnn, tmp_path):
    _, result = mnist_cnn
    good = tmp_path / "good.npz"
    np.savez(good, pixel_values=np.zeros((5, 1, 28, 28), np.float32), labels=np.arange(5))
    ds = load_dataset(str(good), result.path)
    assert len(ds) == 5 and ds.labels.tolist() == [0, 1, 2, 3, 4]
    cases = {
        "wrong_name.npz": ({"image": np.zeros((5, 1, 28, 28), np.float32)}, "lacks pixel_values"),
        "wrong_shape.npz": ({"pixel_values": np.zeros((5, 3, 28, 28), np.float32)}, r"has shape \[5, 3, 28, 28\]"),
        "wrong_dtype.npz": ({"pixel_values": np.zeros((5, 1, 28, 28), np.float64)}, "is float64"),
        "empty.npz": ({"pixel_values": np.zeros((0, 1, 28, 28), np.float32)}, "empty"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ToolchainError, match=message) as info:
            load_dataset(str(tmp_path / name), result.path)
        if message != "empty":
            assert "the model expects pixel_values [" in str(info.value)


def test_npz_with_pickled_objects_is_refused(mnist_cnn, tmp_path):
    _, result = mnist_cnn
    bad = tmp_path / "objects.npz"
    np.savez(bad, pixel_values=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ToolchainError, match="pickled"):
        load_dataset(str(bad), result.path)


def test_image_folder(mnist_cnn, tmp_path):
    from PIL import Image

    _, result = mnist_cnn
    for i in range(3):
        Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset(str(tmp_path), result.path)
    assert ds.feeds["pixel_values"].shape == (3, 1, 28, 28)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ToolchainError, match="no images"):
        load_dataset(str(empty), result.path)


def test_text_file_and_drug_reviews(minilm, tmp_path):
    _, result = minilm
    text = tmp_path / "s.txt"
    text.write_text("A short sentence.\n\nAnother, slightly longer sentence.\n")
    ds = load_dataset(str(text), result.path, DataOptions(seq_len=16))
    assert len(ds) == 2 and set(ds.feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert ds.feeds["input_ids"].shape == (2, 16) and ds.feeds["input_ids"].dtype == np.int64
    texts, labels = drug_reviews()
    assert len(texts) == len(labels) == 979 and set(labels.tolist()) == {0, 1, 2}
    reviews = load_dataset("builtin:drugreviews", result.path, DataOptions(samples=8, seq_len=32))
    assert len(reviews) == 8 and reviews.labels is not None


def test_unknown_specs(mnist_cnn):
    _, result = mnist_cnn
    for spec, message in (("builtin:cifar", "unknown built-in"), ("missing.npz", "no such file"),
                          ("builtin:drugreviews", "tokenizer")):
        with pytest.raises(ToolchainError, match=message):
            load_dataset(spec, result.path)


def test_fashion_mnist_reader_on_a_fake_idx_tree(tmp_path):
    import gzip

    import numpy as np

    from toolchain.core.errors import ToolchainError
    from toolchain.data.readers import fashion_mnist

    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big"))
        f.write(images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + bytes([7, 3]))
    x, y = fashion_mnist("test", root=tmp_path)
    assert (x == images).all() and y.tolist() == [7, 3]
    with pytest.raises(ToolchainError, match="dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)


def test_builtin_photos_split_by_photograph():
    from toolchain.core.onnxfile import ModelInput
    from toolchain.data.load import load_for_inputs
    from toolchain.data.photos import CROPS, crop_boxes, photo_files, split_files

    files = photo_files()
    assert len(files) >= 12  # scikit-image's sample photographs at least
    calib, test = split_files("calibration"), split_files("test")
    assert set(calib).isdisjoint(test) and set(calib) | set(test) == set(files)
    assert len(test) >= 2 * len(calib)
    boxes = crop_boxes(640, 427)
    assert len(boxes) == CROPS and all(r - left == b - t and 0 <= left and r <= 640 and b <= 427
                                       for left, t, r, b in boxes)
    inputs = [ModelInput("pixel_values", ("batch", 3, 96, 96), "float32")]
    ds = load_for_inputs("builtin:photos", inputs, {}, DataOptions())
    assert ds.source == "builtin:photos" and len(ds) == CROPS * len(calib) and ds.labels is None
    x = ds.feeds["pixel_values"]
    assert x.shape[1:] == (3, 96, 96) and x.dtype == np.float32
    assert -2.2 < x.min() < -1.0 and 1.5 < x.max() < 2.7  # ImageNet-normalised real pixels
    held = load_for_inputs("builtin:photos-test", inputs, {}, DataOptions(samples=20))
    assert held.source == "builtin:photos-test" and len(held) == 20
    # crops of different photographs differ: no duplicated crops across the split
    assert not np.isclose(held.feeds["pixel_values"][:, None], x[None, :20]).all(axis=(2, 3, 4)).any()
