"""A whole Ray cluster on this machine, on the loopback address only: for the fleet tests and
``make fleet-demo``.

Ray registers a machine's interface address even with ``--node-ip-address=127.0.0.1`` and listens on
all interfaces; inside a network namespace that has only loopback (``unshare -n``, then
``ip link set lo up``, as root) it can only bind 127.0.0.1. So the caller runs inside such a namespace
(:func:`enter_loopback_namespace` re-executes a script there) and :class:`LocalCluster` refuses to start
anywhere else. Each node is ``toolchain worker ... --block`` started in a session of its own, from the
Python environment given (nodes may come from different venvs: onnxruntime and onnxruntime-openvino),
so :meth:`LocalCluster.kill` can take one node down at once (SIGKILL to its process group) and
:meth:`LocalCluster.stop` stops them all.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.core.errors import ToolchainError

NET_DEV = Path("/proc/self/net/dev")  # this network namespace's interfaces (/sys/class/net is the mounter's)
# the head's health checks of the other nodes: a lost node is noticed within about 6 s (Ray's default is
# about 30 s), with room for a loaded 2-core machine that answers late
HEALTH_ENV = {"RAY_health_check_initial_delay_ms": "2000", "RAY_health_check_period_ms": "1000",
              "RAY_health_check_timeout_ms": "2000", "RAY_health_check_failure_threshold": "3"}


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is ``lo``, and it is up (a connection to a
    listening socket on 127.0.0.1 goes through)."""
    try:
        lines = NET_DEV.read_text().splitlines()[2:]
    except OSError:
        return False
    if sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line) != ["lo"]:
        return False
    with socket.socket() as server, socket.socket() as client:
        try:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            client.settimeout(1.0)
            client.connect(server.getsockname())
        except OSError:
            return False
    return True


def enter_loopback_namespace(argv: list[str]) -> None:
    """Re-run ``argv`` (this Python, same environment) in a new network namespace with only loopback,
    up; returns only when already inside one. Needs root (``unshare -n``)."""
    if loopback_only():
        return
    if os.environ.get("TOOLCHAIN_IN_NETNS"):
        raise ToolchainError("inside the new network namespace, loopback is not the only interface or is down")
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
    if not unshare or not Path(ip).exists():
        raise ToolchainError("the local cluster needs `unshare` and `ip` (util-linux, iproute2)")
    env = {**os.environ, "TOOLCHAIN_IN_NETNS": "1"}
    script = f"{ip} link set lo up && exec \"$@\""
    code = subprocess.call([unshare, "-n", "sh", "-c", script, "sh", sys.executable, *argv], env=env)
    raise SystemExit(code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalNode:
    name: str
    targets: tuple[str, ...]
    python: str
    process: subprocess.Popen
    log: Path
    node_id: str | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalCluster:
    """Head and worker nodes on 127.0.0.1 (see the module's text). Use as a context manager: every node it
    started is stopped on the way out, whatever happened."""

    workdir: Path
    port: int = field(default_factory=free_port)
    nodes: list[LocalNode] = field(default_factory=list)
    stopped_pids: set[int] = field(default_factory=set)  # every process of the nodes when stop() began
    # Ray's session folder: short, as its Unix socket paths must fit in 107 bytes; removed by stop()
    ray_dir: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalCluster:
        if not loopback_only():
            raise ToolchainError("the local cluster runs only in a network namespace with loopback alone",
                                 hint="run it under `unshare -n` (root) after `ip link set lo up`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ray_dir = Path(tempfile.mkdtemp(prefix="tc-ray-"))
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self, name: str, targets: tuple[str, ...], python: str, extra: list[str]) -> LocalNode:
        toolchain = str(Path(python).with_name("toolchain"))
        # every node of one machine needs ports of its own (Ray's defaults collide: the dashboard agent's)
        low = 20000 + 1000 * len(self.nodes)
        ports = [f"--ray-option={key}={free_port()}" for key in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port")]
        ports += [f"--ray-option=min-worker-port={low}", f"--ray-option=max-worker-port={low + 999}"]
        cmd = [toolchain, "worker", *[a for t in targets for a in ("--target", t)], "--node-ip-address=127.0.0.1",
               "--object-store-mb=256", "--block", *ports, *extra]
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(HEALTH_ENV if "--head" in extra else {})}
        env.pop("TOOLCHAIN_PROGRESS", None)
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=self.workdir)
        node = LocalNode(name, targets, python, proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, targets: tuple[str, ...] = (), python: str = sys.executable) -> LocalNode:
        return self._start("head", targets, python, ["--head", f"--port={self.port}", "--num-cpus=1",
                                                     f"--temp-dir={self.ray_dir}"])

    def add_worker(self, name: str, targets: tuple[str, ...], python: str = sys.executable,
                   timeout_s: float = 120.0) -> LocalNode:
        """Start a worker node and wait until it is up (this process must be connected as a driver). Ray gives
        a node 30 s to register, which a loaded 2-core machine can miss: a node that exits while starting is
        started once more."""
        import ray

        before = sum(1 for n in ray.nodes() if n.get("Alive"))
        for attempt in range(2):
            node = self._start(name, targets, python, [f"--address={self.address}", "--num-cpus=1"])
            try:
                self.wait_for(before + 1, timeout_s, only=node)
                return node
            except ToolchainError:
                if node.alive or attempt == 1:
                    raise
                self.nodes.remove(node)
        raise AssertionError("unreachable")

    def wait_for(self, count: int, timeout_s: float = 120.0, only: LocalNode | None = None) -> list[dict]:
        """Wait until ``count`` nodes are alive (this process must be connected as a driver); each started
        node gets its Ray node id, matched by its targets. A node (``only``: that one) that exits first
        fails with its log."""
        import ray

        deadline = time.monotonic() + timeout_s
        while True:
            for node in [only] if only else self.nodes:
                if not node.alive and node.node_id is None:
                    tail = node.log.read_text(errors="replace")[-1500:]
                    raise ToolchainError(f"node {node.name} exited with {node.process.returncode}: {tail}")
            alive = [n for n in ray.nodes() if n.get("Alive")]
            if len(alive) >= count:
                break
            if time.monotonic() > deadline:
                raise ToolchainError(f"only {len(alive)} of {count} nodes came up within {timeout_s:g} s")
            time.sleep(0.5)
        from toolchain.fleet.resources import NodeRecord

        records = [NodeRecord.from_ray(n) for n in alive]
        for node in self.nodes:
            match = [r for r in records if tuple(sorted(node.targets)) == r.targets
                     and r.is_head == (node.name == "head")]
            if len(match) == 1:
                node.node_id = match[0].node_id
        return alive

    def wait_head(self, timeout_s: float = 120.0) -> None:
        """Wait until the head's port answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            head = self.nodes[0]
            if not head.alive:
                raise ToolchainError(f"the head exited: {head.log.read_text(errors='replace')[-1500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.3)
        raise ToolchainError(f"the head did not listen on {self.address} within {timeout_s:g} s")

    def running_task(self, node: LocalNode, name: str = "NodeJob") -> bool:
        """Is a Ray worker of ``node`` running a task or actor called ``name`` now (its process title is
        ``ray::NAME`` or ``ray::NAME.method`` meanwhile)?"""
        for pid in _tree(node.process.pid):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(f"ray::{name}".encode()):
                return True
        return False

    def kill(self, node: LocalNode) -> None:
        """Take ``node`` down at once: SIGKILL to its whole process group and every process under it (its
        raylet, and the workers, which Ray starts in sessions of their own)."""
        _kill_tree(node.process, signal.SIGKILL)
        node.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop every node it started: workers first, the head last; SIGTERM, then SIGKILL after 10 s. A
        driver connection of this process is closed first (Ray ends a driver whose cluster is gone)."""
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:  # pragma: no cover
            pass
        trees = {node.process.pid: _tree(node.process.pid) for node in self.nodes}
        for node in reversed(self.nodes):
            if node.alive:
                _kill_tree(node.process, signal.SIGTERM, trees[node.process.pid])
        deadline = time.monotonic() + 10
        for node in reversed(self.nodes):
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _kill_tree(node.process, signal.SIGKILL, trees[node.process.pid])
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.stopped_pids = set().union(*trees.values()) if trees else set()
        end = time.monotonic() + 10
        while self.leftover_pids() and time.monotonic() < end:
            time.sleep(0.2)
        if self.ray_dir is not None:
            shutil.rmtree(self.ray_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes of the nodes still running (not zombies): in a node's process group, or seen under a
        node when :meth:`stop` began. Empty after :meth:`stop`."""
        pgids = {n.process.pid for n in self.nodes}
        return [pid for pid, (_, pgid, state) in _processes().items()
                if state != "Z" and (pgid in pgids or pid in self.stopped_pids)]


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process, from /proc/PID/stat."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def _tree(pid: int) -> set[int]:
    """``pid``'s process group and every process under ``pid`` now."""
    procs = _processes()
    found = {p for p, (_, pgid, _) in procs.items() if pgid == pid} | {pid}
    grew = True
    while grew:
        more = {p for p, (ppid, _, _) in procs.items() if ppid in found and p not in found}
        found |= more
        grew = bool(more)
    return found


def _kill_tree(proc: subprocess.Popen, sig: int, pids: set[int] | None = None) -> None:
    for pid in (pids if pids is not None else _tree(proc.pid)) | _tree(proc.pid):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
