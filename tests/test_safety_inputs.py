"""Bad input never gets past the CLI as a traceback: a corpus of corrupt, truncated, random, empty or
mismatched inputs, each of which must give exit code 2, exactly one ``error:`` line on stderr, no
traceback, every file that was there unchanged and no new file left behind. Plus: Click's usage errors
are one line, and a full disk is reported as such (not as an internal error, nor blamed on the exporter)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.cli import main

FAST_PROFILE = ["--meter", "estimate", "--repeats", "2", "--window", "0.1", "--idle", "0.1", "--profile-runs", "3",
                "--warmup", "1"]


def tiny_onnx(path: Path) -> Path:
    """An ONNX model built by hand (no torch): Relu on x float32 [N, 1, 4, 4]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _x(n: int = 4, dtype=np.float32, shape=(1, 4, 4)) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(dtype)


def _png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


FACTORY = "import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"


class Evil:  # a pickle that is not a state_dict
    pass


# ------------------------------------------------------------------------------------------ the corpus
# name -> setup(dir) returning argv (paths inside dir). The model of quantize/profile/data cases is tiny_onnx.

Setup = Callable[[Path], list[str]]


def _onnx_file(content: Callable[[Path], bytes], command: str) -> Setup:
    def setup(d: Path) -> list[str]:
        good = tiny_onnx(d / "good.onnx").read_bytes()
        (d / "good.onnx").unlink()
        (d / "bad.onnx").write_bytes(content_fn(good))
        if command == "inspect":
            return ["inspect", str(d / "bad.onnx")]
        if command == "profile":
            return ["profile", str(d / "bad.onnx"), *FAST_PROFILE, "-o", str(d / "prof")]
        return ["quantize", str(d / "bad.onnx"), "--calib", "random", "-o", str(d / "out.onnx")]

    content_fn = content
    return setup


ONNX_CONTENTS = {
    "corrupt": lambda good: b"this is not protobuf" * 10,
    "truncated": lambda good: good[: len(good) // 2],
    "random": lambda good: np.random.default_rng(1).bytes(512),
    "empty": lambda good: b"",
}


def _quantize_with(data: Callable[[Path], str], *extra: str) -> Setup:
    def setup(d: Path) -> list[str]:
        model = tiny_onnx(d / "m.onnx")
        return ["quantize", str(model), "--calib", data(d), *extra, "-o", str(d / "out.onnx")]

    return setup


def _npz(**arrays) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        np.savez(d / "data.npz", **arrays)
        return str(d / "data.npz")

    return make


def _bytes_file(name: str, content: Callable[[], bytes]) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        (d / name).write_bytes(content())
        return str(d / name)

    return make


def _image_folder(files: dict[str, Callable[[], bytes]]) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        folder = d / "images"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content())
        return str(folder)

    return make


def _pickled_object_npz(d: Path) -> str:
    np.savez(d / "data.npz", x=np.array([{"a": 1}, None], dtype=object))
    return str(d / "data.npz")


def _truncated_npz(d: Path) -> str:
    np.savez(d / "full.npz", x=_x())
    raw = (d / "full.npz").read_bytes()
    (d / "full.npz").unlink()
    (d / "data.npz").write_bytes(raw[: len(raw) // 2])
    return str(d / "data.npz")


def _export_factory(weights: Callable[[Path], None] | None, *extra: str) -> Setup:
    def setup(d: Path) -> list[str]:
        (d / "net.py").write_text(FACTORY)
        argv = ["export", f"{d / 'net.py'}:make", "--input-shape", "1x1x2x2", "-o", str(d / "out.onnx"), *extra]
        if weights is not None:
            weights(d / "w.pt")
            argv += ["--weights", str(d / "w.pt")]
        return argv

    return setup


def _pickled_whole_model(d: Path) -> list[str]:
    import torch

    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), d / "model.pt")
    return ["export", str(d / "model.pt"), "--input-shape", "1x1x2x2", "-o", str(d / "out.onnx")]


def _same_output(force: bool) -> Setup:
    def setup(d: Path) -> list[str]:
        model = tiny_onnx(d / "m.onnx")
        return ["quantize", str(model), "--mode", "dynamic", "-o", str(model), *(["--force"] if force else [])]

    return setup


def _tiny(*argv: str) -> Setup:
    def setup(d: Path) -> list[str]:
        model = str(tiny_onnx(d / "m.onnx"))
        return [a.replace("MODEL", model).replace("DIR", str(d)) for a in argv]

    return setup


def _ext_data_model(damage: str, command: str) -> Setup:
    """A Mul-by-weights model whose weights live in ``m.onnx.data``, then that file removed or cut short."""
    def setup(d: Path) -> list[str]:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 4])
        w = numpy_helper.from_array(np.ones((1, 1, 4, 4), np.float32), "w")
        graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"], name="mul")], "ext", [x], [y], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(d / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
        data = d / "m.onnx.data"
        if damage == "missing":
            data.unlink()
        else:
            data.write_bytes(data.read_bytes()[:10])
        if command == "inspect":
            return ["inspect", str(d / "m.onnx")]
        return ["profile", str(d / "m.onnx"), *FAST_PROFILE, "-o", str(d / "prof")]

    return setup


X86_CPU = (Path(__file__).resolve().parents[1] / "targets" / "x86-cpu.toml").read_text()


def _bad_target(old: str, new: str) -> Setup:
    def setup(d: Path) -> list[str]:
        assert old in X86_CPU
        (d / "t.toml").write_text(X86_CPU.replace(old, new, 1))
        return ["profile", str(tiny_onnx(d / "m.onnx")), "--target", str(d / "t.toml"), *FAST_PROFILE,
                "-o", str(d / "prof")]

    return setup


def _cost_table(**changes) -> dict:
    """A cost table of the shape ``toolchain profile`` writes (figures made up), with ``changes`` applied as
    ``path__to__key=value``."""
    stat = {"mean": 0.002, "std": 0.0001, "ci95": [0.0018, 0.0022], "n": 5, "cv_pct": 2.0}
    table = {
        "schema": "toolchain.cost-table", "schema_version": 1, "created": "2026-12-01T00:00:00+00:00",
        "model": {"name": "m.onnx", "sha256": "ab" * 32, "source_hash": "cd" * 32, "precision": "fp32"},
        "target": {"name": "x86-cpu", "providers": ["CPUExecutionProvider"]},
        "meter": {"name": "estimate", "kind": "estimated", "source": "TDP", "idle_watts": 0.0},
        "measurement": {"label": "m.onnx", "batch": 1, "meter": {"name": "estimate", "kind": "estimated",
                                                                 "source": "TDP"},
                        "idle_baseline": {"watts": 0.0, "seconds": 0.0}, "repeats": 5,
                        "inferences_per_window": [100] * 5,
                        "latency_ms": {"median_ms": 0.5, "mean_ms": 0.5, "std_ms": 0.01, "p10_ms": 0.45,
                                       "p90_ms": 0.55, "ci95_ms": [0.49, 0.51], "runs": 500},
                        "joules_per_inference": {"net": stat, "gross": stat, "kind": "estimated"},
                        "watts": {"gross": {**stat, "mean": 4.0}, "net": {**stat, "mean": 4.0}, "kind": "estimated"},
                        "notes": []},
        "profile": {"runs": 5}, "versions": {},
        "rows": [{"rank": 1, "module": "conv1", "module_type": "torch.nn.Conv2d", "onnx_nodes": ["/conv1/Conv"],
                  "kernels": 1, "op_types": ["Conv"], "latency_ms_mean": 0.5, "latency_ms_std": 0.0, "share": 1.0,
                  "energy_j_mean": 0.002, "energy_j_std": 0.0, "macs": 1000, "params": 10, "bytes_moved": 100}],
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = table
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return table


DELETE = object()


def _prune_with_costs(content: Callable[[], str]) -> Setup:
    def setup(d: Path) -> list[str]:
        (d / "costs.json").write_text(content())
        return ["prune", "mnist-cnn", "--costs", str(d / "costs.json"), "--importance", "energy",
                "--target-energy-reduction", "0.2", "--eval", "builtin:mnist", "--samples", "64", "--epochs", "0",
                "--max-steps", "1", "-o", str(d / "pruned")]

    return setup


CASES: dict[str, Setup] = {
    **{f"{cmd}-{kind}-onnx": _onnx_file(content, cmd) for cmd in ("inspect", "profile", "quantize")
       for kind, content in ONNX_CONTENTS.items()},
    "inspect-missing-file": lambda d: ["inspect", str(d / "nope.onnx")],
    "inspect-not-onnx-suffix-text": lambda d: (d.joinpath("notes.txt").write_text("hello"),
                                               ["inspect", str(d / "notes.txt")])[1],
    # .npz data: names, shapes, dtypes, labels, corruption
    "npz-0d-array": _quantize_with(_npz(x=np.float32(1.0))),
    "npz-wrong-input-name": _quantize_with(_npz(images=_x())),
    "npz-extra-input": _quantize_with(_npz(x=_x(), y=_x())),
    "npz-wrong-rank": _quantize_with(_npz(x=_x(shape=(16,)))),
    "npz-wrong-fixed-dim": _quantize_with(_npz(x=_x(shape=(3, 4, 4)))),
    "npz-wrong-dtype": _quantize_with(_npz(x=_x(dtype=np.float64))),
    "npz-string-inputs": _quantize_with(_npz(x=np.array(["a", "b"]))),
    "npz-different-sample-counts": _quantize_with(_npz(x=_x(4), y=_x(3))),
    "npz-zero-samples": _quantize_with(_npz(x=_x(0))),
    "npz-no-arrays": _quantize_with(_npz()),
    "npz-only-labels": _quantize_with(_npz(labels=np.arange(4))),
    "npz-labels-wrong-length": _quantize_with(_npz(x=_x(4), labels=np.arange(3))),
    "npz-labels-strings": _quantize_with(_npz(x=_x(3), labels=np.array(["cat", "dog", "cat"]))),
    "npz-labels-2d": _quantize_with(_npz(x=_x(4), labels=np.zeros((4, 2), np.int64))),
    "npz-labels-0d": _quantize_with(_npz(x=_x(4), labels=np.int64(1))),
    "npz-labels-negative": _quantize_with(_npz(x=_x(4), labels=np.array([0, 1, -1, 0]))),
    "npz-labels-fractional": _quantize_with(_npz(x=_x(4), labels=np.array([0.5, 1, 2, 0]))),
    "npz-pickled-objects": _quantize_with(_pickled_object_npz),
    "npz-truncated": _quantize_with(_truncated_npz),
    "npz-random-bytes": _quantize_with(_bytes_file("data.npz", lambda: np.random.default_rng(2).bytes(300))),
    "npz-empty-file": _quantize_with(_bytes_file("data.npz", lambda: b"")),
    "npz-is-a-pickle": _quantize_with(_bytes_file("data.npz", lambda: pickle.dumps({"x": [1, 2]}))),
    "npz-eval-wrong-shape": _tiny("quantize", "MODEL", "--mode", "dynamic", "--eval", "DIR/e.npz", "-o", "DIR/o.onnx"),
    "profile-data-wrong-dtype": lambda d: (np.savez(d / "p.npz", x=_x(dtype=np.int32)),
                                           _tiny("profile", "MODEL", "--data", "DIR/p.npz", *FAST_PROFILE,
                                                 "-o", "DIR/prof")(d))[1],
    # image folders
    "images-empty-folder": _quantize_with(_image_folder({})),
    "images-no-image-files": _quantize_with(_image_folder({"readme.txt": lambda: b"hi"})),
    "images-random-bytes": _quantize_with(_image_folder({"a.png": lambda: np.random.default_rng(3).bytes(200)})),
    "images-truncated-png": _quantize_with(_image_folder({"a.png": lambda: _png_bytes()[:40]})),
    "images-empty-png": _quantize_with(_image_folder({"a.png": lambda: b""})),
    "images-good-and-corrupt": _quantize_with(_image_folder({"a.png": _png_bytes, "b.jpg": lambda: b"\xff\xd8\xff"})),
    # text
    "txt-empty": _quantize_with(_bytes_file("data.txt", lambda: b"")),
    "txt-random-bytes": _quantize_with(_bytes_file("data.txt", lambda: np.random.default_rng(4).bytes(300))),
    "txt-bad-tokenizer-dir": lambda d: (d.joinpath("tok").mkdir(),
                                        _quantize_with(_bytes_file("data.txt", lambda: b"hello\nworld\n"),
                                                       "--tokenizer", str(d / "tok"))(d))[1],
    "data-unsupported-suffix": _quantize_with(_bytes_file("data.csv", lambda: b"1,2,3\n")),
    "data-missing": _quantize_with(lambda d: str(d / "nope.npz")),
    "data-unknown-builtin": _quantize_with(lambda d: "builtin:nope"),
    # pickles given as weights or models
    "weights-pickled-object": _export_factory(lambda p: p.write_bytes(pickle.dumps(Evil()))),
    "weights-random-bytes": _export_factory(lambda p: p.write_bytes(np.random.default_rng(5).bytes(256))),
    "weights-empty-file": _export_factory(lambda p: p.write_bytes(b"")),
    "model-pickled-without-allow-pickle": _pickled_whole_model,
    # out-of-range numbers and malformed values
    "export-opset-out-of-range": lambda d: ["export", "mnist-cnn", "--opset", "99", "-o", str(d / "o.onnx")],
    "export-min-cosine-above-1": lambda d: ["export", "mnist-cnn", "--min-cosine", "2", "-o", str(d / "o.onnx")],
    "export-seq-len-zero": lambda d: ["export", "mnist-cnn", "--seq-len", "0", "-o", str(d / "o.onnx")],
    "quantize-calib-samples-zero": _tiny("quantize", "MODEL", "--calib", "random", "--calib-samples", "0",
                                         "-o", "DIR/o.onnx"),
    "quantize-runs-too-few": _tiny("quantize", "MODEL", "--calib", "random", "--runs", "1", "-o", "DIR/o.onnx"),
    "quantize-batch-sizes-garbage": _tiny("quantize", "MODEL", "--calib", "random", "--batch-sizes", "1,x",
                                          "-o", "DIR/o.onnx"),
    "quantize-image-size-garbage": _tiny("quantize", "MODEL", "--calib", "random", "--image-size", "big",
                                         "-o", "DIR/o.onnx"),
    "quantize-mean-garbage": _tiny("quantize", "MODEL", "--calib", "random", "--mean", "a,b", "-o", "DIR/o.onnx"),
    "profile-batch-zero": _tiny("profile", "MODEL", "--batch", "0", *FAST_PROFILE, "-o", "DIR/prof"),
    "profile-negative-watts": _tiny("profile", "MODEL", "--watts", "-5", *FAST_PROFILE, "-o", "DIR/prof"),
    # output equal to input
    "quantize-output-is-input": _same_output(force=False),
    "quantize-output-is-input-forced": _same_output(force=True),
    "export-output-not-onnx": lambda d: ["export", "mnist-cnn", "-o", str(d / "o.txt")],
    # missing or truncated external data
    **{f"{cmd}-external-data-{damage}": _ext_data_model(damage, cmd) for cmd in ("inspect", "profile")
       for damage in ("missing", "truncated")},
    # malformed targets
    "target-nan-intensity": _bad_target("intensity_g_per_kwh = 436", "intensity_g_per_kwh = nan"),
    "target-inf-idle": _bad_target("idle_seconds = 2.0", "idle_seconds = inf"),
    "target-huge-round-to": _bad_target("round_to = 8", "round_to = 100000000"),
    "target-bogus-provider-option": _bad_target('name = "cpu"', 'name = "cpu"\noptions = { warp_speed = 9 }'),
    "target-too-many-threads": _bad_target("intra_op_threads = 0", "intra_op_threads = 100000"),
    "target-unknown-key": _bad_target('name = "x86-cpu"', 'name = "x86-cpu"\ncolour = "red"'),
    "target-not-toml": _bad_target('name = "x86-cpu"', 'name = = "x86-cpu'),
    # corrupt, stale and nonsense cost tables
    "costs-not-json": _prune_with_costs(lambda: "{ not json"),
    "costs-wrong-schema-version": _prune_with_costs(lambda: json.dumps(_cost_table(schema_version=99))),
    "costs-nan-energy": _prune_with_costs(lambda: json.dumps(_cost_table(rows__0__energy_j_mean=float("nan")))),
    "costs-negative-energy": _prune_with_costs(lambda: json.dumps(_cost_table(rows__0__energy_j_mean=-1.0))),
    "costs-negative-latency": _prune_with_costs(lambda: json.dumps(_cost_table(rows__0__latency_ms_mean=-0.5))),
    "costs-no-target-name": _prune_with_costs(lambda: json.dumps(_cost_table(target__name=DELETE))),
    "costs-no-source-hash": _prune_with_costs(lambda: json.dumps(_cost_table(model__source_hash=DELETE))),
    "costs-stale-model": _prune_with_costs(lambda: json.dumps(_cost_table())),  # another model's source hash
    # unwritable output locations
    "output-under-a-file": lambda d: (d.joinpath("afile").write_text("x"),
                                      ["quantize", str(tiny_onnx(d / "m.onnx")), "--mode", "dynamic",
                                       "-o", str(d / "afile" / "o.onnx")])[1],
    "output-in-missing-folder": _tiny("quantize", "MODEL", "--mode", "dynamic", "-o", "DIR/no/such/o.onnx"),
    "profile-output-is-a-file": lambda d: (d.joinpath("prof").write_text("mine"),
                                           ["profile", str(tiny_onnx(d / "m.onnx")), *FAST_PROFILE,
                                            "-o", str(d / "prof")])[1],
}


def _eval_wrong_shape_files(d: Path) -> None:
    np.savez(d / "e.npz", x=_x(shape=(2, 4, 4)))


PRE_SETUP = {"npz-eval-wrong-shape": _eval_wrong_shape_files}

XFAIL: dict[str, str] = {}


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def _params():
    for name in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
        yield pytest.param(name, id=name, marks=marks)


def assert_one_line_error(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.stdout == "", result.stdout


@pytest.mark.parametrize("name", list(_params()))
def test_bad_input_is_one_clean_error(name, tmp_path, monkeypatch):
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # files a command would write beside the cwd are caught too
    if name in PRE_SETUP:
        PRE_SETUP[name](work)
    argv = CASES[name](work)
    before = _snapshot(work)
    result = CliRunner().invoke(main, argv, prog_name="toolchain")
    assert_one_line_error(result)
    assert _snapshot(work) == before, "a file was changed, added or left behind"


def test_corpus_is_large_enough():
    assert len(CASES) >= 60


# ------------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("argv", [
    ["--bogus"],
    ["no-such-command"],
    ["export", "--bogus", "mnist-cnn", "-o", "x.onnx"],
    ["export"],
    ["export", "mnist-cnn"],
    ["export", "mnist-cnn", "-o", "x.onnx", "--exporter", "nope"],
    ["export", "mnist-cnn", "-o", "x.onnx", "--opset", "abc"],
    ["inspect"],
    ["inspect", "m.onnx", "--nodes=3"],
    ["quantize", "m.onnx", "-o", "q.onnx", "--mode", "fast"],
    ["quantize", "m.onnx", "-o", "q.onnx", "--calib-samples", "many"],
    ["profile", "m.onnx", "--batch", "1.5"],
    ["profile", "no-such-model.onnx"],  # the command's own BadParameter
    ["models", "extra-argument"],
    ["prune", "mnist-cnn", "--ratio", "half", "--eval", "random", "-o", "p"],
], ids=lambda argv: " ".join(argv))
def test_usage_errors_are_one_line(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, argv, prog_name="toolchain")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "--help" in lines[0] and "Usage:" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_help_version_and_bare_group_still_work():
    runner = CliRunner()
    r = runner.invoke(main, ["--help"], prog_name="toolchain")
    assert r.exit_code == 0 and "Usage: toolchain" in r.stdout
    r = runner.invoke(main, ["export", "--help"], prog_name="toolchain")
    assert r.exit_code == 0 and "Usage: toolchain export" in r.stdout
    r = runner.invoke(main, ["--version"], prog_name="toolchain")
    assert r.exit_code == 0 and "toolchain, version" in r.stdout
    r = runner.invoke(main, [], prog_name="toolchain")  # no command: the help, as before
    assert "Commands:" in r.output


# ---------------------------------------------------------------------------------------- full disk


def _no_space(errnum: int = errno.ENOSPC, filename: str | None = "/data/out.json"):
    def raiser(*args, **kwargs):
        raise OSError(errnum, "No space left on device", filename)

    return raiser


@pytest.mark.parametrize("errnum, expected", [
    (errno.ENOSPC, "error: no space left on device writing /data/out.json"),
    (errno.EDQUOT, "error: disk quota exceeded writing /data/out.json"),
    (errno.EROFS, "error: read-only file system writing /data/out.json"),
    (errno.EACCES, "error: permission denied: /data/out.json"),
])
def test_full_disk_anywhere_is_one_line_user_error(errnum, expected, monkeypatch):
    import toolchain.commands.models as models_cmd

    monkeypatch.setattr(models_cmd, "emit", _no_space(errnum))
    result = CliRunner().invoke(main, ["models", "--json"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


def test_full_disk_without_file_name_and_wrapped(monkeypatch):
    import toolchain.commands.models as models_cmd

    def wrapped(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("serialisation failed") from exc

    monkeypatch.setattr(models_cmd, "emit", wrapped)
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 2 and result.stderr.startswith("error: no space left on device"), result.output
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("wrap", [False, True])
def test_full_disk_during_export_is_not_blamed_on_the_exporter(wrap, tmp_path, monkeypatch):
    import torch

    def full(*args, **kwargs):
        err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.onnx"))
        if not wrap:
            raise err
        raise RuntimeError("export failed") from err

    monkeypatch.setattr(torch.onnx, "export", full)
    (tmp_path / "net.py").write_text(FACTORY)
    result = CliRunner().invoke(main, ["export", f"{tmp_path / 'net.py'}:make", "--input-shape", "1x1x2x2",
                                       "--exporter", "torchscript", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: no space left on device writing {tmp_path / 'm.onnx'}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert "--exporter" not in result.output and "exporter cannot" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.py"]  # no scratch directory left behind


def test_export_api_reraises_full_disk(tmp_path, monkeypatch):
    import torch

    from toolchain.export.exporter import ExportOptions, export_model
    from toolchain.model.load import load_model

    monkeypatch.setattr(torch.onnx, "export", _no_space(filename=str(tmp_path / "m.onnx")))
    (tmp_path / "net.py").write_text(FACTORY)
    loaded = load_model(f"{tmp_path / 'net.py'}:make", input_shapes=["1x1x2x2"])
    with pytest.raises(OSError) as info:
        export_model(loaded, tmp_path / "m.onnx", ExportOptions(exporter="torchscript", parity=False))
    assert info.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------------- data readers


def test_npz_reader_rejects_bad_arrays_and_labels(tmp_path):
    from toolchain.core.errors import ToolchainError
    from toolchain.data.dataset import DataOptions
    from toolchain.data.readers import read_npz

    cases = {
        "scalar": ({"x": np.float32(1)}, "scalar"),
        "short": ({"x": _x(4), "labels": np.arange(3)}, "3 labels for 4 samples"),
        "strings": ({"x": _x(3), "labels": np.array(["a", "b", "c"])}, "integer class indices"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(ToolchainError, match=message):
            read_npz(tmp_path / f"{name}.npz", DataOptions())
    np.savez(tmp_path / "ok.npz", x=_x(3), labels=np.array([0.0, 2.0, 1.0]))
    ds = read_npz(tmp_path / "ok.npz", DataOptions())
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 2, 1]


def test_random_bytes_npz_is_not_blamed_on_pickles(tmp_path):
    from toolchain.core.errors import ToolchainError
    from toolchain.data.dataset import DataOptions
    from toolchain.data.readers import read_npz

    (tmp_path / "r.npz").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ToolchainError, match="not a readable .npz file") as info:
        read_npz(tmp_path / "r.npz", DataOptions())
    assert "pickled" not in str(info.value)
