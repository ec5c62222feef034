"""Safety bounds (issue 12): thread counts held to this machine's cores, durations and counts to sane
maxima, every number in a target file finite and in range, provider options checked by name, and
--watts bounded. Tiny graphs only: nothing here measures for long or starts many threads."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.core.host import host_arch

CORES = os.cpu_count() or 1
TOO_MANY = CORES + 1  # over the limit, yet harmless if a bound is missing (no 100000-thread pool here)

TARGET = """\
name = "bounded"
quantization_preset = "x86"
round_to = 8

[session]
intra_op_threads = 0

[[providers]]
name = "cpu"

[meter]
names = ["estimate"]
idle_seconds = 0.0

[carbon]
intensity_g_per_kwh = 436
source = "test"
"""


def _target(tmp_path, old: str | None = None, new: str = "", name: str = "t.toml"):
    text = TARGET
    if old is not None:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def _tiny_onnx(tmp_path, mapped: bool = True):
    """A one-node Relu model; ``mapped`` gives it an (empty) node-to-module map so profile gets past
    its first check to the ones under test."""
    import onnx
    from onnx import TensorProto, helper

    from toolchain.formats.nodemap import MAP_KEY

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if mapped:
        helper.set_model_props(model, {MAP_KEY: "{}"})
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    text = " ".join(lines)
    for needle in needles:
        assert needle in text, text
    return text


# ----------------------------------------------------------------------------------------- threads


def test_create_session_refuses_more_threads_than_cores(tmp_path):
    from toolchain.runtime.session import create_session, max_threads

    assert max_threads() == CORES
    model = _tiny_onnx(tmp_path, mapped=False)
    with pytest.raises(ToolchainError, match=f"more than this machine's {CORES} CPU cores"):
        create_session(model, threads=TOO_MANY)
    with pytest.raises(ToolchainError, match="whole number"):
        create_session(model, threads=-1)
    assert create_session(model, threads=CORES) is not None
    assert create_session(model, threads=0) is not None  # 0: ONNX Runtime's default


def test_profile_options_bound_threads_and_durations():
    from toolchain.energy import MeterOptions
    from toolchain.profile.run import ProfileOptions

    ProfileOptions(threads=CORES, idle_s=600, window_s=600, repeats=1000)  # the maxima themselves are fine
    bad = [dict(threads=TOO_MANY), dict(threads=100000), dict(idle_s=1e9), dict(idle_s=float("inf")),
           dict(idle_s=float("nan")), dict(idle_s=-1), dict(window_s=float("inf")), dict(window_s=601),
           dict(window_s=0.0), dict(repeats=10**7), dict(repeats=1), dict(warmup=10**9),
           dict(profile_runs=10**9), dict(batch=0), dict(meter_options=MeterOptions(watts=float("inf"))),
           dict(meter_options=MeterOptions(watts=1e308)), dict(meter_options=MeterOptions(watts_per_core=float("nan")))]
    for kwargs in bad:
        with pytest.raises(ToolchainError) as info:
            ProfileOptions(**kwargs)
        assert "\n" not in str(info.value), kwargs
    with pytest.raises(ToolchainError, match=f"{CORES} CPU cores"):
        ProfileOptions(threads=TOO_MANY)


@pytest.mark.parametrize("command", ["profile", "compare"])
def test_cli_threads_above_cores_is_one_line_naming_the_limit(tmp_path, command):
    model = _tiny_onnx(tmp_path)
    result = CliRunner().invoke(main, [command, str(model), "--meter", "estimate", "--threads", str(TOO_MANY)])
    _one_error_line(result, "--threads", f"{CORES} CPU cores")
    result = CliRunner().invoke(main, [command, str(model), "--meter", "estimate", "--threads", "100000"])
    _one_error_line(result, "--threads", f"at most {CORES}")


@pytest.mark.parametrize("command", ["profile", "compare"])
@pytest.mark.parametrize("args", [["--idle", "1e9"], ["--idle", "inf"], ["--idle", "nan"], ["--window", "1e9"],
                                  ["--window", "nan"], ["--repeats", "10000000"], ["--warmup", "1000000000"],
                                  ["--profile-runs", "1000000000"], ["--watts", "inf"], ["--watts", "1e308"],
                                  ["--watts", "nan"], ["--watts-per-core", "1e308"]])
def test_cli_durations_counts_and_watts_are_bounded(tmp_path, command, args):
    model = _tiny_onnx(tmp_path)
    result = CliRunner().invoke(main, [command, str(model), "--meter", "estimate", *args])
    _one_error_line(result, args[0])
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_quantize_bounds_runs_and_budgets(tmp_path):
    model = _tiny_onnx(tmp_path)
    out = str(tmp_path / "q.onnx")
    for args in (["--runs", "1000000000"], ["--max-accuracy-drop", "nan"], ["--max-accuracy-drop", "inf"],
                 ["--min-cosine", "nan"]):
        result = CliRunner().invoke(main, ["quantize", str(model), "-o", out, *args])
        _one_error_line(result, args[0])


def test_cli_limits_match_the_library():
    import toolchain.commands.profile as cli
    import toolchain.profile.options as lib

    for name in ("MAX_REPEATS", "MAX_WINDOW_S", "MAX_IDLE_S", "MAX_WARMUP", "MAX_PROFILE_RUNS", "MAX_BATCH",
                 "MAX_SEQ_LEN", "MAX_WATTS"):
        assert getattr(cli, name) == getattr(lib, name), name


def test_target_threads_above_cores_make_it_unusable(tmp_path):
    from toolchain.runtime.session import ProviderStatus
    from toolchain.targets.host import usable
    from toolchain.targets.target import load_target

    cpu = [ProviderStatus("CPUExecutionProvider", True, True)]
    ok = load_target(_target(tmp_path, "intra_op_threads = 0", f"intra_op_threads = {CORES}"))
    assert usable(ok, statuses=cpu, arch=host_arch()) == (True, "")
    many = load_target(_target(tmp_path, "intra_op_threads = 0", f"intra_op_threads = {TOO_MANY}"))
    good, why = usable(many, statuses=cpu, arch=host_arch())
    assert not good and f"{CORES} CPU cores" in why and "intra_op_threads" in why


def test_cli_profile_with_a_target_asking_for_too_many_threads_stops_before_measuring(tmp_path):
    model = _tiny_onnx(tmp_path)
    path = _target(tmp_path, "intra_op_threads = 0", f"intra_op_threads = {TOO_MANY}")
    result = CliRunner().invoke(main, ["profile", str(model), "--target", str(path), "--meter", "estimate",
                                       "--idle", "0", "-o", str(tmp_path / "out")])
    _one_error_line(result, "not usable", f"{CORES} CPU cores")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- target files


@pytest.mark.parametrize("old,new,needle", [
    ("intensity_g_per_kwh = 436", "intensity_g_per_kwh = nan", "carbon.intensity_g_per_kwh"),
    ("intensity_g_per_kwh = 436", "intensity_g_per_kwh = inf", "carbon.intensity_g_per_kwh"),
    ("intensity_g_per_kwh = 436", "intensity_g_per_kwh = 5000", "carbon.intensity_g_per_kwh"),
    ("intensity_g_per_kwh = 436", "intensity_g_per_kwh = 0", "carbon.intensity_g_per_kwh"),
    ("idle_seconds = 0.0", "idle_seconds = inf", "meter.idle_seconds"),
    ("idle_seconds = 0.0", "idle_seconds = nan", "meter.idle_seconds"),
    ("idle_seconds = 0.0", "idle_seconds = 601", "meter.idle_seconds"),
    ("round_to = 8", "round_to = 100000000", "round_to"),
    ("round_to = 8", "round_to = 0", "round_to"),
    ("intra_op_threads = 0", "intra_op_threads = 100000", "session.intra_op_threads"),
    ('name = "cpu"', 'name = "cpu"\noptions = { bogus = 1 }', "unknown option 'bogus'"),
    ('name = "cpu"', 'name = "cuda"\noptions = { device_id = 0, gpu_memlimit = 1 }', "unknown option 'gpu_memlimit'"),
    ('name = "cpu"', 'name = "cuda"\noptions = { device_id = 1000 }', "option 'device_id'"),
    ('name = "cpu"', 'name = "tensorrt"\noptions = { trt_int8 = true }', "unknown option 'trt_int8'"),
    ('name = "cpu"', 'name = "openvino"\noptions = { device = "CPU" }', "unknown option 'device'"),
    ('name = "cpu"', 'name = "openvino"\noptions = { num_of_threads = 100000 }', "option 'num_of_threads'"),
    ('name = "cpu"', 'name = "cuda"\noptions = { gpu_mem_limit = inf }', "finite"),
])
def test_target_numbers_and_provider_options_are_validated(tmp_path, old, new, needle):
    from toolchain.targets.target import load_target

    path = _target(tmp_path, old, new)
    with pytest.raises(ToolchainError) as info:
        load_target(path)
    text = str(info.value)
    assert needle in text and str(path) in text and "\n" not in text
    result = CliRunner().invoke(main, ["targets", str(path)])
    _one_error_line(result, "error: ", needle)


def test_unknown_provider_option_names_the_known_ones(tmp_path):
    from toolchain.targets.target import load_target

    with pytest.raises(ToolchainError) as info:
        load_target(_target(tmp_path, 'name = "cpu"', 'name = "tensorrt"\noptions = { trt_fp16 = true }'))
    assert "trt_fp16_enable" in str(info.value) and "trt_engine_cache_path" in str(info.value)


def test_the_edges_of_each_range_load(tmp_path):
    from toolchain.targets.target import builtin_targets, load_target

    t = load_target(_target(tmp_path, "round_to = 8", "round_to = 1024"))
    assert t.round_to == 1024
    text = (TARGET.replace("idle_seconds = 0.0", "idle_seconds = 600")
            .replace("intensity_g_per_kwh = 436", "intensity_g_per_kwh = 4999.9")
            .replace('name = "cpu"', 'name = "openvino"\noptions = { device_type = "CPU", num_of_threads = 4 }'))
    path = tmp_path / "edges.toml"
    path.write_text(text)
    t = load_target(path)
    assert t.idle_seconds == 600 and t.carbon_g_per_kwh == 4999.9
    assert t.provider_options() == [{"device_type": "CPU", "num_of_threads": "4"}]
    assert len(builtin_targets()) >= 7  # every built-in file is within the ranges and uses known options


def test_readme_documents_the_ranges():
    from toolchain.targets.target import BUILTIN_DIR

    text = (BUILTIN_DIR / "README.md").read_text()
    for fragment in ("1..1024", "0..600", "0 < x < 5000", "os.cpu_count()", "100000 W", "PROVIDER_OPTIONS"):
        assert fragment in text, fragment


@pytest.mark.parametrize("argv", [
    ["export", "mnist-cnn", "-o", "x.onnx", "--min-cosine", "nan"],
    ["prune", "mnist-cnn", "--eval", "builtin:mnist", "-o", "p", "--ratio", "0.5", "--step", "nan"],
    ["prune", "mnist-cnn", "--eval", "builtin:mnist", "-o", "p", "--ratio", "0.5", "--max-accuracy-drop", "inf"],
    ["distill", "--teacher", "mnist-cnn", "--student", "mnist-cnn", "--data", "builtin:mnist", "-o", "d", "--lr", "inf"],
    ["pipeline", "-o", "run", "--max-accuracy-drop", "nan"],
])
def test_nan_and_inf_options_are_refused_before_anything_runs(argv, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from toolchain.cli import main

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, argv)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert list(tmp_path.iterdir()) == []
