"""Deployment targets: the built-in TOML files, validation, usability on this machine, the CLI."""

from __future__ import annotations

import json
import platform

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.core.host import host_arch
from toolchain.runtime.session import ProviderStatus
from toolchain.targets.host import meter_statuses, usable
from toolchain.targets.target import BUILTIN_DIR, ProviderSpec, Target, builtin_targets, load_target

BUILTINS = ("x86-cpu", "x86-vnni", "arm64-cpu", "cuda", "tensorrt", "openvino-cpu", "jetson-orin")
ON_X86 = host_arch() == "x86_64"

GOOD = """\
name = "my-board"
description = "a board in the lab"
quantization_preset = "x86"
round_to = 4

[requires]
arch = "amd64"
cpu_flags = ["AVX2"]

[session]
intra_op_threads = 2

[[providers]]
name = "cpu"
options = { use_arena = true }

[meter]
names = ["rapl", "estimate"]
idle_seconds = 0.5

[carbon]
intensity_g_per_kwh = 120.5
source = "made up for a test"
"""


def write(tmp_path, text: str, name: str = "t.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_builtin_target_loads_with_its_fields():
    targets = {t.name: t for t in builtin_targets()}
    assert set(BUILTINS) <= set(targets)
    for name, t in targets.items():
        assert isinstance(t, Target)
        assert t.path is not None and t.path.stem == name and t.path.parent == BUILTIN_DIR
        assert t.description and t.carbon_source
        assert t.providers and all(p.name.endswith("ExecutionProvider") for p in t.providers)
        assert len(t.provider_options()) == len(t.provider_names()) == len(t.providers)
        assert t.meters and t.carbon_g_per_kwh > 0 and t.round_to >= 1 and t.idle_seconds >= 0
        assert json.loads(json.dumps(t.to_dict()))["name"] == name
        assert load_target(name) == t


def test_builtin_targets_say_what_the_brief_says():
    t = {name: load_target(name) for name in BUILTINS}
    assert t["x86-cpu"].provider_names() == ["CPUExecutionProvider"] and t["x86-cpu"].meters == ("rapl",)
    assert t["x86-vnni"].requires_cpu_flags == ("avx512_vnni",) and t["x86-vnni"].quant_preset == "x86-vnni"
    assert t["arm64-cpu"].requires_arch == "aarch64" and t["arm64-cpu"].meters == ("estimate",)
    assert t["cuda"].provider_names()[0] == "CUDAExecutionProvider" and t["cuda"].meters == ("nvml",)
    assert t["tensorrt"].provider_names() == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = t["tensorrt"].provider_options()[0]
    assert trt["trt_int8_enable"] == "true" and trt["trt_fp16_enable"] == "true"
    assert trt["trt_engine_cache_enable"] == "true" and trt["trt_engine_cache_path"]
    assert t["openvino-cpu"].provider_options()[0] == {"device_type": "CPU"}
    assert t["jetson-orin"].meters == ("jetson",) and t["jetson-orin"].requires_arch == "aarch64"
    assert {t[n].quant_preset for n in ("cuda", "tensorrt", "jetson-orin")} == {"gpu"}


@pytest.mark.skipif(not ON_X86, reason="x86-cpu needs an x86-64 host")
def test_x86_cpu_is_usable_here():
    assert usable(load_target("x86-cpu")) == (True, "")


@pytest.mark.skipif(ON_X86, reason="arm64-cpu needs an aarch64 host")
def test_arm64_cpu_is_usable_on_arm():
    assert usable(load_target("arm64-cpu")) == (True, "")


def test_the_other_architecture_is_not_usable():
    other = "arm64-cpu" if ON_X86 else "x86-cpu"
    ok, why = usable(load_target(other))
    assert not ok and "needs an" in why and host_arch() in why


def test_cpu_flags_are_checked():
    t = load_target("x86-vnni")
    assert usable(t, arch="x86_64", cpu_flags={"avx2", "fma"}) == (False, "this CPU lacks avx512_vnni")
    cpu_only = [ProviderStatus("CPUExecutionProvider", True, True)]
    assert usable(t, arch="x86_64", cpu_flags={"avx2", "avx512_vnni"}, statuses=cpu_only) == (True, "")


@pytest.mark.parametrize("name, provider", [("cuda", "CUDAExecutionProvider"),
                                            ("tensorrt", "TensorrtExecutionProvider"),
                                            ("openvino-cpu", "OpenVINOExecutionProvider")])
def test_gpu_and_openvino_targets_need_their_provider(name, provider):
    """With a CPU-only onnxruntime build (as installed here) the reason names the provider and the fix."""
    cpu_only = [ProviderStatus("AzureExecutionProvider", True, False, "remote"),
                ProviderStatus("CPUExecutionProvider", True, True)]
    ok, why = usable(load_target(name), statuses=cpu_only)
    assert not ok and provider in why and "pip install onnxruntime-" in why


def test_a_provider_that_falls_back_is_not_usable():
    gpu_build_without_gpu = [ProviderStatus("CUDAExecutionProvider", True, False,
                                            "listed, but the session fell back to CPUExecutionProvider"),
                             ProviderStatus("CPUExecutionProvider", True, True)]
    ok, why = usable(load_target("cuda"), statuses=gpu_build_without_gpu, arch="x86_64")
    assert not ok and "CUDAExecutionProvider does not run here" in why and "fell back" in why


def test_gpu_targets_are_not_usable_with_this_onnxruntime():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    for name, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        ok, why = usable(load_target(name))
        assert not ok and provider in why


def test_meter_statuses_follow_the_target():
    statuses = meter_statuses(load_target("x86-cpu"))
    assert [m.name for m in statuses] == ["rapl"]
    assert all(m.readable or m.fix for m in statuses)


def test_custom_toml_loads(tmp_path):
    t = load_target(str(write(tmp_path, GOOD)))
    assert t.name == "my-board" and t.round_to == 4 and t.threads == 2
    assert t.requires_arch == "x86_64" and t.requires_cpu_flags == ("avx2",)
    assert t.providers == (ProviderSpec("CPUExecutionProvider", {"use_arena": True}),)
    assert t.provider_options() == [{"use_arena": "true"}]
    assert t.meters == ("rapl", "estimate") and t.idle_seconds == 0.5
    assert t.carbon_g_per_kwh == 120.5 and t.carbon_source == "made up for a test"
    assert load_target(t.path) == t  # a Path works too


def test_minimal_toml_gets_defaults(tmp_path):
    text = ('name = "m"\nquantization_preset = "gpu"\n[[providers]]\nname = "cuda"\n'
            '[meter]\nnames = ["nvml"]\n[carbon]\nintensity_g_per_kwh = 50\n')
    t = load_target(str(write(tmp_path, text)))
    assert (t.description, t.round_to, t.threads, t.idle_seconds, t.carbon_source) == ("", 8, 0, 2.0, "")
    assert t.requires_arch is None and t.requires_cpu_flags == ()


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = {
    "syntax": (_replace('round_to = 4', 'round_to = = 4'), "invalid TOML"),
    "unknown top key": ('colour = "red"\n' + GOOD, "unknown key 'colour' in the top level"),
    "unknown table key": (_replace("idle_seconds = 0.5", "idle_seconds = 0.5\nwatts = 3"), "unknown key 'watts' in [meter]"),
    "unknown provider key": (_replace('name = "cpu"', 'name = "cpu"\ndevice = 0'), "unknown key 'device' in [[providers]] #1"),
    "missing name": (_replace('name = "my-board"\n', ""), "missing required key name"),
    "missing preset": (_replace('quantization_preset = "x86"\n', ""), "missing required key quantization_preset"),
    "missing carbon": (GOOD[:GOOD.index("[carbon]")], "missing [carbon] table"),
    "missing intensity": (_replace("intensity_g_per_kwh = 120.5\n", ""), "missing required key carbon.intensity_g_per_kwh"),
    "missing meter names": (_replace('names = ["rapl", "estimate"]\n', ""), "missing required key meter.names"),
    "no providers": (_replace('[[providers]]\nname = "cpu"\noptions = { use_arena = true }\n', ""),
                     "missing [[providers]]"),
    "unknown provider": (_replace('name = "cpu"', 'name = "gpu"'), "unknown execution provider 'gpu'"),
    "unknown meter": (_replace('"rapl", "estimate"', '"rapl", "ina"'), "unknown power meter 'ina'"),
    "unknown preset": (_replace('"x86"', '"x86-avx9"'), "unknown quantization_preset 'x86-avx9'"),
    "zero carbon": (_replace("120.5", "0"), "carbon.intensity_g_per_kwh must be positive"),
    "negative carbon": (_replace("120.5", "-3"), "carbon.intensity_g_per_kwh must be positive"),
    "text carbon": (_replace("120.5", '"lots"'), "carbon.intensity_g_per_kwh must be a number"),
    "bad round_to": (_replace("round_to = 4", "round_to = 0"), "round_to must be an integer >= 1"),
    "bad arch": (_replace('arch = "amd64"', 'arch = "sparc"'), "unknown requires.arch 'sparc'"),
    "nested option": (_replace("use_arena = true", "use_arena = { a = 1 }"), "option 'use_arena' in [[providers]] #1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_target_files_give_one_clear_line(tmp_path, case):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ToolchainError) as info:
        load_target(str(path))
    message = str(info.value)
    assert expected in message, message
    assert str(path) in message and "\n" not in message


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(ToolchainError, match="no such target file"):
        load_target(str(tmp_path / "absent.toml"))
    with pytest.raises(ToolchainError, match="unknown target 'warp-drive'") as info:
        load_target("warp-drive")
    assert "x86-cpu" in str(info.value)  # the hint lists the built-in names


def test_cli_targets_json_parses():
    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    entries = {e["name"]: e for e in json.loads(result.output)["targets"]}
    assert set(BUILTINS) <= set(entries)
    for e in entries.values():
        assert isinstance(e["usable"], bool) and (e["usable"] or e["reason"])
        assert [m["name"] for m in e["meter_status"]] == e["meters"]
    if ON_X86:
        assert entries["x86-cpu"]["usable"]
    assert entries["tensorrt"]["providers"][0]["options"]["trt_int8_enable"] is True


def test_cli_targets_table_and_custom_file(tmp_path):
    path = write(tmp_path, GOOD.replace('arch = "amd64"', f'arch = "{host_arch()}"').replace('["AVX2"]', "[]"))
    result = CliRunner().invoke(main, ["targets", str(path), "x86-cpu"])
    assert result.exit_code == 0, result.output
    assert "my-board" in result.output and "x86-cpu" in result.output and "cuda" not in result.output


def test_cli_targets_bad_path_exits_2_with_one_error_line(tmp_path):
    result = CliRunner().invoke(main, ["targets", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.toml" in lines[0]


def test_cli_targets_bad_file_exits_2(tmp_path):
    path = write(tmp_path, _replace('"rapl", "estimate"', '"ina"'))
    result = CliRunner().invoke(main, ["targets", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: ") and "unknown power meter 'ina'" in result.output


def test_platform_spelling_is_normalised():
    assert host_arch() in ("x86_64", "aarch64") or host_arch() == platform.machine()


def test_quantize_takes_a_target_and_refuses_an_unusable_one_before_writing(tiny_resnet, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    _, result = tiny_resnet
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(main, ["quantize", result.path, "--calib", "random", "--target", "cuda", "-o", str(out)])
    assert r.exit_code == 2 and "CUDAExecutionProvider is not usable" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["quantize", result.path, "--calib", "random", "--calib-samples", "4",
                                  "--eval-samples", "4", "--runs", "3", "--batch-sizes", "1", "--target", "x86-cpu",
                                  "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["preset"] == "x86" and out.is_file()


@pytest.mark.parametrize("arch, flags, kind", [
    ("x86_64", {"avx2", "avx512_vnni"}, "x86-vnni"),
    ("x86_64", {"avx2", "avx_vnni"}, "x86"),  # AVX-VNNI without AVX512-VNNI: both rules used to disagree here
    ("x86_64", {"avx2"}, "x86"),
    ("aarch64", {"asimddp"}, "arm64"),
])
def test_one_host_rule_for_the_default_target_and_the_int8_preset(arch, flags, kind, monkeypatch):
    """The default target and the default INT8 preset come from one rule, so they agree on every CPU,
    and the default target is usable on the CPU it was picked for."""
    import toolchain.core.host as host
    from toolchain.targets.host import default_target_name
    from toolchain.targets.presets import host_preset

    monkeypatch.setattr(host, "host_arch", lambda: arch)
    monkeypatch.setattr(host, "host_cpu_flags", lambda cpuinfo=None: set(flags))
    assert host.host_kind() == kind
    target = load_target(default_target_name())
    assert target.quant_preset == host_preset() == host.HOST_KINDS[kind][1]
    assert target.requires_arch in (None, arch)
    assert set(target.requires_cpu_flags) <= flags


def test_one_cpuinfo_parser(tmp_path):
    """doctor, target requirements and the estimate meter read the same fields of /proc/cpuinfo."""
    from toolchain.core.host import cpu_info, host_cpu_flags
    from toolchain.energy.estimate import cpu_model

    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512_vnni\n\n"
                 "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512_vnni\n")
    assert host_cpu_flags(f) == {"fpu", "avx2", "avx512_vnni"}
    info = cpu_info(f)
    assert info.model == cpu_model(f) == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.features["AVX512-VNNI"] and not info.features["AVX-VNNI"]
    assert host_cpu_flags(tmp_path / "missing") is None and cpu_model(tmp_path / "missing") == "unknown"


def test_preset_reason_names_the_cpu_and_the_deciding_instruction_set(monkeypatch):
    from toolchain.core import host
    from toolchain.targets.presets import preset_reason

    monkeypatch.setattr(host, "host_arch", lambda: "x86_64")
    monkeypatch.setattr(host, "cpu_info", lambda *a: host.CpuInfo("Test Xeon", 2, "x86_64", {}))
    monkeypatch.setattr(host, "host_cpu_flags", lambda *a: {"avx2", "avx512_vnni"})
    text = preset_reason(None)
    assert text.startswith("preset x86-vnni") and "Test Xeon has AVX512-VNNI" in text and "reduce-range" not in text
    monkeypatch.setattr(host, "host_cpu_flags", lambda *a: {"avx2", "avx_vnni"})
    text = preset_reason(None)
    assert text.startswith("preset x86 ") and "no AVX512-VNNI (AVX-VNNI only)" in text and "reduce-range" in text
    assert preset_reason("gpu", "cuda").endswith("the quantization preset of target cuda")
    assert preset_reason("arm64").endswith("asked for by name")
