"""Fleet profiling on Ray: the pieces without a cluster, then a real cluster of three nodes on loopback
(tests/fleet_scenarios.py, inside a network namespace of its own): the missing-target error, a comparison
from two nodes with two onnxruntime builds, a node killed mid-job (retried elsewhere; lost where no other
node offers the target), and every process of the cluster gone afterwards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.core.errors import ToolchainError
from toolchain.fleet.resources import (
    NodeRecord,
    describe_offered,
    live_nodes,
    offered,
    resource_for,
    targets_in,
)
from toolchain.fleet.worker import NodeOptions, start_command

ROOT = Path(__file__).resolve().parents[1]
OV_PYTHON = ROOT / ".venv-openvino" / "bin" / "python"


def _ray_node(node_id, targets, alive=True, head=False):
    res = {resource_for(t): 1.0 for t in targets} | {"CPU": 1.0, "node:127.0.0.1": 1.0}
    if head:
        res["node:__internal_head__"] = 1.0
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "127.0.0.1", "NodeManagerHostname": "vm",
            "Resources": res}


def test_resources_name_targets_and_order_workers_before_the_head():
    assert targets_in({"toolchain-target:x86-cpu": 1, "CPU": 2, "toolchain-target:cuda": 1}) == ["cuda", "x86-cpu"]
    nodes = live_nodes([_ray_node("h" * 56, ["x86-cpu"], head=True), _ray_node("a" * 56, ["x86-cpu", "cuda"]),
                        _ray_node("d" * 56, ["openvino-cpu"], alive=False)])
    assert [n.node_id[0] for n in nodes] == ["a", "h"]  # the dead node is gone, the head comes last
    assert [n.node_id[0] for n in offered(nodes)["x86-cpu"]] == ["a", "h"]
    assert describe_offered(nodes) == "cuda (1 node), x86-cpu (2 nodes)"
    assert describe_offered([]) == "none"
    assert NodeRecord.from_ray(_ray_node("b" * 56, [])).label == "vm (127.0.0.1, node bbbbbbbb)"


def test_missing_target_names_what_the_cluster_offers():
    from toolchain.fleet.dispatch import check_offered
    from toolchain.targets.target import load_target

    nodes = live_nodes([_ray_node("a" * 56, ["x86-cpu"]), _ray_node("b" * 56, ["openvino-cpu"])])
    check_offered([load_target("x86-cpu")], nodes, "127.0.0.1:1")
    with pytest.raises(ToolchainError) as err:
        check_offered([load_target("x86-cpu"), load_target("cuda")], nodes, "10.0.0.5:6379")
    assert err.value.message == ("no node of the cluster at 10.0.0.5:6379 offers target cuda; the cluster offers: "
                                 "openvino-cpu (1 node), x86-cpu (1 node)")
    assert "toolchain worker --target cuda --address 10.0.0.5:6379" in err.value.hint


def test_start_command_offers_targets_as_resources():
    head = start_command(NodeOptions(head=True, port=7000, targets=("x86-cpu",)), ["x86-cpu"])
    assert head[1:] == ["start", "--head", "--port=7000", "--include-dashboard=false",
                        '--resources={"toolchain-target:x86-cpu":1}', "--disable-usage-stats"]
    join = start_command(NodeOptions(address="10.0.0.5:6379", targets=("a", "b"), node_ip_address="127.0.0.1",
                                     num_cpus=0, block=True, ray_options=("node-manager-port=6380",)), ["a", "b"])
    assert join[2:] == ["--address=10.0.0.5:6379", '--resources={"toolchain-target:a":1,"toolchain-target:b":1}',
                        "--node-ip-address=127.0.0.1", "--num-cpus=0", "--node-manager-port=6380",
                        "--disable-usage-stats", "--block"]
    for bad in (dict(), dict(head=True, address="x:1"), dict(address="x:1"),
                dict(address="x:1", targets=("a",), ray_options=("--port=1",))):
        with pytest.raises(ToolchainError):
            NodeOptions(**bad)


def test_worker_dry_run_prints_the_ray_start_line_and_refuses_an_unusable_target():
    runner = CliRunner()
    ok = runner.invoke(main, ["worker", "--target", "x86-cpu", "--address", "127.0.0.1:6379", "--dry-run", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["targets"] == ["x86-cpu"] and '--resources={"toolchain-target:x86-cpu":1}' in data["command"]
    bad = runner.invoke(main, ["worker", "--target", "cuda", "--address", "127.0.0.1:6379", "--dry-run"])
    assert bad.exit_code == 2
    assert "target 'cuda' is not usable on this node" in bad.output and "Traceback" not in bad.output
    neither = runner.invoke(main, ["worker", "--target", "x86-cpu", "--dry-run"])
    assert neither.exit_code == 2 and "--address HEAD_ADDRESS" in neither.output


def test_a_job_runs_on_a_node_without_ray(mnist_cnn, tmp_path):
    """The node's side alone: the shipped files written, the target loaded from its TOML text, the cost
    table back as a dict that names this node and this onnxruntime build."""
    from toolchain.fleet.dispatch import model_files
    from toolchain.fleet.node import JobSpec, run_job
    from toolchain.formats.costs import CostTable
    from toolchain.profile.run import ProfileOptions
    from toolchain.targets.target import load_target

    _, exported = mnist_cnn
    path = str(exported.path)
    target = load_target("x86-cpu")
    spec = JobSpec("x86-cpu", Path(target.path).read_text(),
                   ProfileOptions(meter="estimate", repeats=2, window_s=0.1, idle_s=0, warmup=1, profile_runs=1))
    out = run_job(spec, {path: model_files(path)})
    table = out["tables"][path]
    assert table["model"]["path"] == path and table["host"]["onnxruntime"]["distribution"] == "onnxruntime"
    assert CostTable.from_dict(table).target["name"] == "x86-cpu"
    with pytest.raises(ToolchainError, match="folder"):
        run_job(spec, {path: {"../evil.onnx": b"x"}})


def test_model_files_ship_external_data(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from toolchain.fleet.dispatch import model_files

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    files = model_files(tmp_path / "m.onnx")
    assert list(files) == ["m.onnx", "m.onnx.data"] and len(files["m.onnx.data"]) == 64 * 64 * 4
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ToolchainError, match="external data file"):
        model_files(tmp_path / "m.onnx")


# --- a real cluster on loopback ------------------------------------------------------------------------------


def _can_unshare() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare here (util-linux)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare -n is not permitted here ({probe.stderr.strip()}): needs root"


@pytest.fixture(scope="module")
def fleet(mnist_cnn, tmp_path_factory):
    reason = _can_unshare()
    if reason:
        pytest.skip(reason)
    if not OV_PYTHON.exists():
        pytest.fail(f"{OV_PYTHON} is missing: `make install-openvino` builds it (make test does)")
    _, exported = mnist_cnn
    out = tmp_path_factory.mktemp("fleet") / "seen.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "fleet_scenarios.py"), str(out), str(exported.path)],
                          capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return seen


def test_every_node_is_on_loopback_and_the_cluster_is_gone_afterwards(fleet):
    assert len(fleet["nodes"]) == 3
    assert {n["address"] for n in fleet["nodes"]} == {"127.0.0.1"}
    assert fleet["leftover"] == []


def test_a_target_no_node_offers_is_one_clear_line(fleet):
    run = fleet["cli_missing"]
    assert run["code"] == 2 and "Traceback" not in run["stderr"]
    lines = [line for line in run["stderr"].splitlines() if line.strip()]
    assert len(lines) == 1, run["stderr"]
    assert "offers target cuda; the cluster offers: openvino-cpu (1 node), x86-cpu (2 nodes)" in lines[0]


def test_compare_on_the_cluster_names_both_nodes_and_both_builds(fleet):
    run = fleet["cli_compare"]
    assert run["code"] == 0, run["stderr"][-2000:]
    data = json.loads(run["stdout"])
    columns = {c["target"]: c for c in data["columns"]}
    assert set(columns) == {"x86-cpu", "openvino-cpu"}
    assert columns["x86-cpu"]["node"]["onnxruntime"]["distribution"] == "onnxruntime"
    assert columns["openvino-cpu"]["node"]["onnxruntime"]["distribution"] == "onnxruntime-openvino"
    assert columns["x86-cpu"]["node"]["node_id"] != columns["openvino-cpu"]["node"]["node_id"]
    assert columns["x86-cpu"]["node"]["node_id"] == fleet["node_ids"]["w1"]  # a worker before the head
    assert all(c["meter"]["kind"] == "estimated" for c in data["columns"])


def test_a_node_killed_mid_job_is_retried_on_another_node(fleet):
    assert fleet["kills"]["x86-cpu_running_seen"] is True  # the kill came while the job ran
    retry = fleet["retry"]
    tries = retry["attempts"]["x86-cpu"]
    assert [t["outcome"] for t in tries] == ["lost", "ok"]
    assert tries[0]["node_id"] == fleet["node_ids"]["w1"] and tries[1]["node_id"] == fleet["node_ids"]["head"]
    assert retry["measured_on"]["x86-cpu"]["node_id"] == fleet["node_ids"]["head"]
    assert sorted(t for _, t in retry["tables"]) == ["openvino-cpu", "x86-cpu"] and not retry["lost"]


def test_a_node_killed_mid_job_with_no_other_node_is_lost_and_the_rest_kept(fleet):
    assert fleet["kills"]["openvino-cpu_running_seen"] is True
    lost = fleet["lost"]
    assert [t["outcome"] for t in lost["attempts"]["openvino-cpu"]] == ["lost"]
    assert [entry["target"] for entry in lost["lost"]] == ["openvino-cpu"]
    assert "no other node offers it" in lost["lost"][0]["reason"]
    assert [t for _, t in lost["tables"]] == ["x86-cpu"]  # the other target's result is kept
