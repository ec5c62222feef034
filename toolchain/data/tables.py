"""Users' own labelled text: a CSV (``.csv``), tab-separated (``.tsv``) or JSON Lines (``.jsonl``) file
holding a text and a label per row, in the column / key that :class:`~toolchain.data.dataset.DataOptions`
names (``text_field``, ``label_field``; ``text`` and ``label`` by default).

Labels are either all integers (class indices, used as given) or all strings (class names, mapped to
indices in sorted order of the names, which become :attr:`Dataset.classes`). Every problem with the file
is one :class:`~toolchain.core.errors.ToolchainError` naming the file and, where there is one, the line."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.core.errors import ToolchainError, one_line, option
from toolchain.core.onnxfile import ModelInput
from toolchain.data.dataset import DataOptions, Dataset
from toolchain.data.readers import tokenize

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class LabelledText:
    """The rows of a labelled text file: texts, int64 class indices, and the class names when the labels
    were names (None when they were integers)."""

    texts: list[str]
    labels: np.ndarray
    classes: tuple[str, ...] | None


def read_labelled_text(path: Path, opts: DataOptions) -> LabelledText:
    """The texts and labels of ``path`` (``.csv``, ``.tsv`` or ``.jsonl``), checked row by row."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ToolchainError(f"{path}: not a .csv, .tsv or .jsonl file")
    text = _decode(path)
    if suffix == ".jsonl":
        rows = _jsonl_rows(path, text, opts.text_field, opts.label_field)
    else:
        rows = _csv_rows(path, text, TABLE_SUFFIXES[suffix] or ",", opts.text_field, opts.label_field)
    if not rows:
        raise ToolchainError(f"{path}: no rows (a header line, then one text and label per row)"
                             if suffix != ".jsonl" else f"{path}: no rows (one JSON object per line)")
    labels, classes = _encode_labels(path, rows)
    return LabelledText([t for _, t, _ in rows], labels, classes)


def read_table(path: Path, inputs: list[ModelInput], meta: dict[str, str], opts: DataOptions) -> Dataset:
    """``path`` as a labelled :class:`Dataset`, tokenized exactly as ``.txt`` data is (file order kept)."""
    table = read_labelled_text(path, opts)
    ds = tokenize(table.texts, inputs, meta, opts, str(path))
    ds.labels = table.labels[: len(ds)]
    ds.classes = table.classes
    return ds


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ToolchainError(f"{path}: cannot read it ({one_line(exc)})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ToolchainError(f"{path}: not UTF-8 text (undecodable byte 0x{raw[exc.start]:02x} on line {line})",
                             hint="save the file as UTF-8") from None


# a row as (line number, text, raw label: str from CSV, str or int from JSON)
Row = tuple[int, str, "str | int"]


def _csv_rows(path: Path, text: str, delimiter: str, text_field: str, label_field: str) -> list[Row]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise ToolchainError(f"{path}: empty file (a {kind} file needs a header line naming its columns)")
        header = [h.strip() for h in header]
        missing = [f for f in (text_field, label_field) if f not in header]
        if missing:
            raise ToolchainError(f"{path}: no column {' or '.join(repr(m) for m in missing)} (columns found: "
                                 f"{_names(header)})", hint=_fields_hint())
        ti, li = header.index(text_field), header.index(label_field)
        rows: list[Row] = []
        for record in reader:
            line = reader.line_num
            if not any(field.strip() for field in record):
                continue  # a blank line
            if len(record) != len(header):
                raise ToolchainError(f"{path}: line {line} has {len(record)} fields, the header has {len(header)}"
                                     + (" (quote texts that hold the delimiter)" if len(record) > len(header) else ""))
            rows.append(_row(path, line, record[ti], record[li].strip(), text_field, label_field))
    except csv.Error as exc:
        raise ToolchainError(f"{path}: not a readable {kind} file (line {reader.line_num}: {exc})") from None
    return rows


def _jsonl_rows(path: Path, text: str, text_field: str, label_field: str) -> list[Row]:
    rows: list[Row] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise ToolchainError(f"{path}: line {line} is not valid JSON ({reason})",
                                 hint="a .jsonl file holds one JSON object per line") from None
        if not isinstance(obj, dict):
            raise ToolchainError(f"{path}: line {line} is a JSON {type(obj).__name__}, not an object",
                                 hint="a .jsonl file holds one JSON object per line")
        missing = [f for f in (text_field, label_field) if f not in obj]
        if missing:
            raise ToolchainError(f"{path}: line {line} has no key {' or '.join(repr(m) for m in missing)} "
                                 f"(keys found: {_names(list(obj))})", hint=_fields_hint())
        value, label = obj[text_field], obj[label_field]
        if not isinstance(value, str):
            raise ToolchainError(f"{path}: line {line}: {text_field!r} is a JSON {_json_type(value)}, not a string")
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ToolchainError(f"{path}: line {line}: label {label_field!r} is a JSON {_json_type(label)}; "
                                 "use a class name (string) or a class index (integer)")
        rows.append(_row(path, line, value, label.strip() if isinstance(label, str) else label, text_field,
                         label_field))
    return rows


def _row(path: Path, line: int, text: str, label: str | int, text_field: str, label_field: str) -> Row:
    text = text.strip()
    if not text:
        raise ToolchainError(f"{path}: line {line} has an empty text ({text_field!r})")
    if label == "":
        raise ToolchainError(f"{path}: line {line} has an empty label ({label_field!r})")
    return line, text, label


def _encode_labels(path: Path, rows: list[Row]) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class indices for the rows' labels, and the sorted class names when they are names."""
    ints = [(line, label if isinstance(label, int) else int(label)) for line, _, label in rows
            if isinstance(label, int) or _INTEGER.fullmatch(label)]
    if len(ints) == len(rows):
        negative = [(line, value) for line, value in ints if value < 0]
        if negative:
            line, value = negative[0]
            raise ToolchainError(f"{path}: line {line} has label {value}; integer labels are class indices from 0")
        return np.asarray([value for _, value in ints], dtype=np.int64), None
    if ints:
        names = [(line, label) for line, _, label in rows if not (isinstance(label, int) or _INTEGER.fullmatch(label))]
        raise ToolchainError(f"{path}: labels mix integers (line {ints[0][0]}: {ints[0][1]}) and class names "
                             f"(line {names[0][0]}: {names[0][1]!r}); use one kind")
    classes = tuple(sorted({str(label) for _, _, label in rows}))
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index[str(label)] for _, _, label in rows], dtype=np.int64), classes


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:12])
    return (shown + f", ... ({len(names)} in all)" if len(names) > 12 else shown) or "none"


def _fields_hint() -> str:
    return ("name the columns with " + option("--text-field NAME", "DataOptions(text_field=NAME)") + " and "
            + option("--label-field NAME", "DataOptions(label_field=NAME)") + " (the pipeline: recipe keys "
            "text_field, label_field)")


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
