"""`make fleet-demo`: the ResNet-50 layout, FP32 and INT8, compared side by side on two targets measured by
two different nodes of a Ray cluster on this machine:

- x86-cpu on a worker node from .venv (onnxruntime, the CPU execution provider);
- openvino-cpu on a worker node from .venv-openvino (onnxruntime-openvino, the OpenVINO execution provider).

The cluster (a head and the two workers) runs inside a network namespace that has only loopback (Ray binds
127.0.0.1 alone there); the script re-executes itself under `unshare -n` (root). It exports and quantizes
the model first (cached under out/fleet-demo/), starts the cluster, runs
`toolchain compare FP32 INT8 --targets x86-cpu,openvino-cpu --cluster ADDRESS`, which prints the table and
each node's provenance and writes out/fleet-demo/compare/, checks that every node had a loopback address,
and stops the cluster whatever happened.

Energy is the labelled estimate unless METER says otherwise (this VM has no RAPL).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "fleet-demo"
BIN = Path(sys.executable).parent
OV_PYTHON = ROOT / ".venv-openvino" / "bin" / "python"
METER = os.environ.get("METER", "estimate")
MEASURE = ["--meter", METER, "--repeats", "5", "--window", "1.0", "--profile-runs", "10"]


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def models() -> tuple[Path, Path]:
    fp32, int8 = OUT / "resnet-50.onnx", OUT / "resnet-50.int8.onnx"
    if not fp32.exists():
        step("export the ResNet-50 layout (random weights, catalogue resnet-50), checked against PyTorch")
        run([BIN / "toolchain", "export", "resnet-50", "-o", fp32])
    if not int8.exists():
        step("INT8 static quantization (QDQ, per-channel weights, the x86 preset), calibrated on builtin:photos")
        run([BIN / "toolchain", "quantize", fp32, "--calib", "builtin:photos", "--calib-samples", "32",
             "--eval-samples", "16", "--target", "x86-cpu", "-o", int8])
    return fp32, int8


def main() -> int:
    from toolchain.fleet.local import LocalCluster, enter_loopback_namespace

    OUT.mkdir(parents=True, exist_ok=True)
    fp32, int8 = models()
    enter_loopback_namespace([__file__])  # from here on, in a namespace with loopback only
    import ray

    from toolchain.fleet import dispatch

    if not OV_PYTHON.exists():
        print(f"{OV_PYTHON} is missing: run `make install-openvino`", file=sys.stderr)
        return 2
    start = time.monotonic()
    with LocalCluster(OUT / "cluster") as cluster:
        step(f"start a Ray cluster on {cluster.address}: a head, a CPU-EP node (.venv), an OpenVINO-EP node "
             "(.venv-openvino)")
        cluster.start_head()
        cluster.wait_head()
        dispatch.connect(cluster.address)
        cluster.wait_for(1)
        cluster.add_worker("cpu-ep", ("x86-cpu",))
        cluster.add_worker("openvino-ep", ("openvino-cpu",), python=str(OV_PYTHON))
        nodes = cluster.wait_for(3)
        addresses = sorted({n["NodeManagerAddress"] for n in nodes})
        print(f"{len(nodes)} nodes up in {time.monotonic() - start:.0f} s, addresses: {', '.join(addresses)}")
        if addresses != ["127.0.0.1"]:
            print("a node registered a non-loopback address: stopping", file=sys.stderr)
            return 1
        ray.shutdown()  # the compare command below is the cluster's driver now
        step("compare FP32 and INT8 on x86-cpu and openvino-cpu, each target on its own node")
        run([BIN / "toolchain", "compare", fp32, int8, "--targets", "x86-cpu,openvino-cpu", "--cluster",
             cluster.address, *MEASURE, "-o", OUT / "compare", "--force"])
    step(f"cluster stopped; processes left: {cluster.leftover_pids() or 'none'}; "
         f"{time.monotonic() - start:.0f} s with the cluster")
    print(f"wrote {OUT / 'compare'} (comparison.json, comparison.html, one cost table per column)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
