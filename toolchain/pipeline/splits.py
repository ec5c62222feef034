"""Where the baseline stage's three parts of the data come from: train (fine-tuning, distillation),
calibration (INT8 calibration and every selection: pruning steps, the scheduler's choice) and test (held
out: only ever evaluated; the report's accuracy comes from it alone).

A held-out set the user names (``--eval-data``, ``--calib-data``) is used as given; a built-in data set
with a published split uses its own (:data:`KNOWN_SPLITS`); otherwise the one data set is split,
stratified by label where it has labels, with the recipe's seed (:data:`HOLD_OUT`).
"""

from __future__ import annotations

from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.pipeline.context import CALIB_DATA, DATA, EVAL_DATA, Splits

# built-in training sets and their own (calibration, test) parts: never split again
KNOWN_SPLITS: dict[str, tuple[str | None, str]] = {
    "builtin:bbcnews": ("builtin:bbcnews-calibration", "builtin:bbcnews-test"),
    "builtin:fashion-mnist": (None, "builtin:fashion-mnist-test"),
    "builtin:photos": (None, "builtin:photos-test"),
}
HOLD_OUT = (0.60, 0.15, 0.25)  # train, calibration, test: one data set split (stratified by label)


def _split(ds, fractions: tuple[float, ...], seed: int) -> list:
    return ds.split_stratified(fractions, seed)


def split_data(loaded, data: str, eval_data: str | None, calib_data: str | None, opts) -> tuple[Splits, dict[str, Any]]:
    """The three parts for the model ``loaded`` and how each was made (for the manifest and the report).
    ``opts`` (a :class:`toolchain.data.dataset.DataOptions`) caps the samples read from ``data`` only."""
    from dataclasses import replace

    from toolchain.model.data import load_dataset_for

    known_calib, known_test = KNOWN_SPLITS.get(data, (None, None))
    eval_spec, calib_spec = eval_data or known_test, calib_data or known_calib
    for spec, name in ((eval_spec, EVAL_DATA), (calib_spec, CALIB_DATA)):
        if spec is not None and spec == data:
            raise ToolchainError(f"{name} {spec} is the training data ({DATA}); held-out data must be other data")
    if eval_spec and calib_spec and eval_spec == calib_spec:
        raise ToolchainError(f"{EVAL_DATA} and {CALIB_DATA} are the same data ({eval_spec}); the test set is only "
                             "ever evaluated")
    train = load_dataset_for(data, loaded, opts)
    if train.synthetic:
        raise ToolchainError(f"{data}: random data cannot judge accuracy", hint=f"give real data with {DATA}")
    whole = replace(opts, samples=None)
    how: dict[str, str] = {}
    if eval_spec:
        test = load_dataset_for(eval_spec, loaded, whole)
        how["test"] = "given" if eval_data else f"{data}'s own held-out split"
        if calib_spec:
            calibration = load_dataset_for(calib_spec, loaded, whole)
            how["calibration"] = "given" if calib_data else f"{data}'s own calibration split"
        else:
            train, calibration = _split(train, (0.8, 0.2), opts.seed)
            how["calibration"] = f"a fifth of {data}, split off (stratified, seed {opts.seed})"
    elif calib_spec:
        calibration = load_dataset_for(calib_spec, loaded, whole)
        how["calibration"] = "given"
        train, test = _split(train, (0.75, 0.25), opts.seed)
        how["test"] = f"a quarter of {data}, held out (stratified, seed {opts.seed})"
    else:
        train, calibration, test = _split(train, HOLD_OUT, opts.seed)
        how["calibration"] = f"{HOLD_OUT[1]:.0%} of {data}, split off (stratified, seed {opts.seed})"
        how["test"] = f"{HOLD_OUT[2]:.0%} of {data}, held out (stratified, seed {opts.seed})"
    how["train"] = data
    parts = Splits(train, calibration, test)
    for name, ds in zip(Splits._fields, parts, strict=True):
        if len(ds) < 4:
            raise ToolchainError(f"the {name} part of the data has {len(ds)} samples; at least 4 are needed",
                                 hint=f"give more data with {DATA} (or {EVAL_DATA} / {CALIB_DATA})")
    described = {name: {"source": ds.source, "samples": len(ds), "how": how[name], "labelled": ds.labels is not None,
                        "subset_of": ds.subset_of}
                 for name, ds in zip(Splits._fields, parts, strict=True)}
    return parts, described
