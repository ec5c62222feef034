"""The one latency timer and its rule: sessions timed alternately do not spin, and every figure quantize
reports states its threads and CPU. Behaviour only: no timing thresholds."""

from __future__ import annotations

import os
import shutil

import pytest

from toolchain.core.host import CPU_FLAGS
from toolchain.runtime import session as rt_session
from toolchain.runtime import timing
from toolchain.runtime.session import ALTERNATING_CONFIG, _tiny_model, create_session

SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def _spinning(session) -> dict[str, str | None]:
    opts = session.get_session_options()
    out = {}
    for key in SPIN_KEYS:
        try:
            out[key] = opts.get_session_config_entry(key)
        except RuntimeError:  # not set: ONNX Runtime's default (spinning on)
            out[key] = None
    return out


@pytest.fixture
def spy(monkeypatch):
    """Every session created through ``toolchain.runtime.session.create_session``, with its arguments."""
    made: list[tuple[dict, object]] = []
    real = rt_session.create_session

    def recording(*args, **kwargs):
        s = real(*args, **kwargs)
        made.append((kwargs, s))
        return s

    monkeypatch.setattr(rt_session, "create_session", recording)
    from toolchain.profile import (
        trace,  # bound at import: patched there too, whichever test imported it first
    )

    monkeypatch.setattr(trace, "create_session", recording)
    return made


def test_alternating_sessions_do_not_spin():
    assert set(ALTERNATING_CONFIG) == set(SPIN_KEYS) and set(ALTERNATING_CONFIG.values()) == {"0"}
    assert set(_spinning(create_session(_tiny_model(), alternating=True)).values()) == {"0"}
    assert set(_spinning(create_session(_tiny_model())).values()) == {None}
    # the rule wins over a caller's config, and the caller's other entries are kept
    s = create_session(_tiny_model(), alternating=True,
                       session_config={SPIN_KEYS[0]: "1", "session.use_env_allocators": "0"})
    assert set(_spinning(s).values()) == {"0"}
    assert s.get_session_options().get_session_config_entry("session.use_env_allocators") == "0"


def test_interleaved_alternates_after_warmup():
    calls: list[str] = []
    stats = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2, runs=3)
    assert calls == ["a", "b"] * 5 and set(stats) == {"a", "b"}
    assert all(s.n == 3 for s in stats.values())


def test_conditions_state_threads_spinning_and_cpu():
    c = timing.conditions(None, runs=7, warmup=3)
    assert c["threads"] == os.cpu_count() and c["spinning"] is False and c["runs"] == 7 and c["warmup"] == 3
    assert timing.conditions(1, runs=1, warmup=0)["threads"] == 1
    assert timing.conditions(0, runs=1, warmup=0)["threads"] == os.cpu_count()
    assert c["cpu"]["model"] and set(c["cpu"]["flags"]) == set(CPU_FLAGS)
    assert {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"} <= set(c["cpu"]["flags"])
    assert all(isinstance(v, bool) for v in c["cpu"]["flags"].values())


@pytest.fixture(scope="module")
def mnist_pair(mnist_cnn, tmp_path_factory):
    from toolchain.data.dataset import DataOptions
    from toolchain.data.load import load_dataset
    from toolchain.quantize import quantize_model
    from toolchain.targets.presets import QuantConfig

    _, result = mnist_cnn
    ds = load_dataset("builtin:mnist", result.path, DataOptions(samples=60))
    out = tmp_path_factory.mktemp("timing") / "mnist.int8.onnx"
    return result.path, quantize_model(result.path, out, QuantConfig(), ds.take(0, 40)).path, ds.take(40, None)


def test_speed_and_fidelity_times_sessions_that_do_not_spin(mnist_pair, spy):
    from toolchain.quantize.measure import speed_and_fidelity

    fp32, int8, evaluation = mnist_pair
    latency, _ = speed_and_fidelity({"FP32": fp32, "INT8": int8}, evaluation, batches=(1,), runs=2)
    assert set(latency) == {"FP32", "INT8"} and len(spy) == 2
    assert all(kw.get("alternating") is True and set(_spinning(s).values()) == {"0"} for kw, s in spy)


def test_quantize_report_records_timing_conditions(mnist_pair, tmp_path):
    from toolchain.quantize import QuantizeJob, run_quantize

    fp32, _, _ = mnist_pair
    report = run_quantize(QuantizeJob(model=fp32, output=str(tmp_path / "q.onnx"), calib_data="builtin:mnist",
                                      calib_samples=20, eval_samples=20, batch_sizes=(1,), runs=2))
    t = report["timing"]
    assert t["threads"] == os.cpu_count() and t["spinning"] is False and t["runs"] == 2 and t["warmup"] == 3
    assert t["cpu"]["model"] and {"avx2", "avx512_vnni", "avx_vnni"} <= set(t["cpu"]["flags"])
    # only added: the keys the report always had are all still there
    assert {"model", "output", "preset", "batches", "providers", "notes", "failed", "calibration", "evaluation",
            "rows", "chosen", "recommendation", "quantization"} <= set(report)


def test_compare_measures_sessions_that_do_not_spin(mnist_pair, tmp_path, spy):
    from toolchain.profile.run import ProfileOptions, compare_models
    from toolchain.targets.target import load_target

    fp32, int8, _ = mnist_pair
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    shutil.copy(fp32, a)
    shutil.copy(int8, b)
    options = ProfileOptions(meter="estimate", repeats=2, window_s=0.05, warmup=1, idle_s=0.0, profile_runs=2)
    comparison = compare_models([str(a), str(b)], [load_target("x86-cpu")], options)
    assert len(comparison.tables) == 2
    measured = [(kw, s) for kw, s in spy if kw.get("alternating")]
    # compare's two alternated sessions, and per model the profiler pass and its unprofiled twin
    assert len(measured) == 6 and all(set(_spinning(s).values()) == {"0"} for _, s in measured)
