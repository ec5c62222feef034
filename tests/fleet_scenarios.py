"""The fleet tests' cluster, run as a script inside a network namespace that has only loopback:

    python tests/fleet_scenarios.py OUT.json MODEL.onnx

It re-executes itself under ``unshare -n`` (root), starts a head (offering x86-cpu) and two worker nodes
with ``toolchain worker --block`` (w1: x86-cpu, from this venv; w2: openvino-cpu, from .venv-openvino),
then, as a driver and through the CLI:

1. ``nodes``: every node's address;
2. ``cli_missing``: ``toolchain compare --cluster`` on a target no node offers (exit code, stderr);
3. ``cli_compare``: ``toolchain compare MODEL --targets x86-cpu,openvino-cpu --cluster --json``;
4. ``retry``: the x86-cpu job's node (w1) killed while it runs the job: retried on the head;
5. ``lost``: the openvino-cpu job's node (w2) killed while it runs: lost, the x86-cpu result kept;
6. ``leftover``: processes of the cluster still running after it was stopped (none).

and writes what it saw to OUT.json. The tests (tests/test_fleet.py) read that file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OV_PYTHON = ROOT / ".venv-openvino" / "bin" / "python"


def _killer(cluster, node, target: str, started: dict):
    """on_start hook: when ``target``'s job is submitted to ``node``, kill the node once its worker is
    really running the job (plus a second, so the kill lands mid-measurement)."""

    def on_start(name, record):
        if name != target or record.node_id != node.node_id or started.get(target):
            return
        started[target] = True

        def watch():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not cluster.running_task(node, "NodeJob"):
                time.sleep(0.1)
            started[f"{target}_running_seen"] = cluster.running_task(node, "NodeJob")
            time.sleep(1.0)
            started[f"{target}_killed_at"] = time.time()
            cluster.kill(node)

        threading.Thread(target=watch, daemon=True).start()

    return on_start


def _cli(args: list[str], timeout: int = 300) -> dict:
    env = {**os.environ, "TOOLCHAIN_PROGRESS": "off"}
    proc = subprocess.run([str(Path(sys.executable).with_name("toolchain")), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return {"code": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def main(out_path: str, model: str) -> None:
    from toolchain.fleet.local import LocalCluster, enter_loopback_namespace

    enter_loopback_namespace([__file__, out_path, model])
    from toolchain.fleet import dispatch
    from toolchain.profile.run import ProfileOptions
    from toolchain.targets.target import load_target

    seen: dict = {"python": sys.executable, "openvino_python": str(OV_PYTHON)}
    options = ProfileOptions(meter="estimate", repeats=3, window_s=1.0, idle_s=0, warmup=2, profile_runs=3)
    measure = ["--meter", "estimate", "--repeats", "2", "--window", "0.3", "--idle", "0", "--profile-runs", "2"]
    started: dict = {}
    t0 = time.monotonic()
    cluster = LocalCluster(Path(out_path).parent / "cluster")
    try:
        with cluster:
            cluster.start_head(("x86-cpu",))
            cluster.wait_head()
            dispatch.connect(cluster.address)
            cluster.wait_for(1)
            w1 = cluster.add_worker("w1", ("x86-cpu",))
            w2 = cluster.add_worker("w2", ("openvino-cpu",), python=str(OV_PYTHON))
            seen["nodes"] = [{"address": n["NodeManagerAddress"], "alive": n["Alive"],
                              "resources": sorted(n["Resources"])} for n in cluster.wait_for(3)]
            seen["node_ids"] = {n.name: n.node_id for n in cluster.nodes}
            seen["up_s"] = time.monotonic() - t0
            seen["cli_missing"] = _cli(["compare", model, "--targets", "x86-cpu,cuda", "--cluster", cluster.address,
                                        *measure])
            seen["cli_compare"] = _cli(["compare", model, "--targets", "x86-cpu,openvino-cpu", "--cluster",
                                        cluster.address, "--json", *measure])
            targets = [load_target("x86-cpu"), load_target("openvino-cpu")]
            progress: list[str] = []
            retry = dispatch.run_on_cluster(cluster.address, [model], targets, options, progress=progress.append,
                                            on_start=_killer(cluster, w1, "x86-cpu", started))
            seen["retry"] = {**retry.cluster_dict(), "tables": [list(k) for k in retry.tables], "progress": progress}
            progress = []
            lost = dispatch.run_on_cluster(cluster.address, [model], targets, options, progress=progress.append,
                                           on_start=_killer(cluster, w2, "openvino-cpu", started))
            seen["lost"] = {**lost.cluster_dict(), "tables": [list(k) for k in lost.tables], "progress": progress}
            seen["kills"] = started
    finally:
        cluster.stop()
        seen["leftover"] = cluster.leftover_pids()
        seen["total_s"] = time.monotonic() - t0
        Path(out_path).write_text(json.dumps(seen, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
