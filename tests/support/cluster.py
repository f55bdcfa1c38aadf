"""A real multi-node Ray cluster on one machine: ``ray start --head`` and ``ray start --address``
processes, each with its own temp dir, loopback IP, CPU count and custom resource, stopped by PID.

Each node listens on its own loopback address (head ``127.0.0.2``, workers ``127.0.0.3`` …), so
traffic never leaves the machine and the cluster still has distinct node IPs. Ray rewrites
``127.0.0.1`` to the machine's public address (``resolve_ip_for_localhost``), other 127/8 addresses
are kept as given. Every node gets a custom resource ``node_<name>`` so that a test can pin a task
to it (``resources={"node_b": 0.001}``), and its own ``DETFLOW_HOME`` (its node-local disk).

Token authentication is disabled here (``RAY_AUTH_MODE=disabled``): the nodes and every client run
as the same user on loopback, and the Jobs API test drives the cluster without a token file.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from services import ServiceUnavailable, free_port

__all__ = ["RayNode", "RayCluster", "descendants"]

HEAD_IP = "127.0.0.2"


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


@dataclass
class RayNode:
    """One ``ray start --block`` process (its raylet, GCS … are its children, in its process group)."""

    name: str
    ip: str
    root: Path
    proc: subprocess.Popen | None = None

    @property
    def resource(self) -> str:
        return f"node_{self.name}"

    @property
    def home(self) -> Path:
        """This node's DETFLOW_HOME (its local disk)."""
        return self.root / "detflow_home"

    def step_leftovers(self) -> list[Path]:
        """What workflow steps left on this node's disk: files under ``$DETFLOW_HOME/workflows`` and
        in its TMPDIR's ``detflow-*`` scratch or download directories (``detflow-scratch/`` keeps an
        empty folder per process that used it, removed by the next one once that process ended)."""
        tmp = self.root / "tmp"
        return ([p for p in (self.home / "workflows").rglob("*") if p.is_file()]
                + sorted(p for p in tmp.glob("detflow-*/**/*") if p.is_file())
                + sorted(p for p in tmp.glob("detflow-*") if p.is_file()))

    def start(self, args: list[str], env: dict[str, str]) -> "RayNode":
        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        # Ray's temp dir holds socket paths (limited to 107 bytes): keep it short, outside pytest's tmp.
        self.temp = Path(f"/tmp/rc-{os.getpid()}-{self.name}")
        shutil.rmtree(self.temp, ignore_errors=True)
        # each node's agents get their own ports: the dashboard agent also listens on 127.0.0.1, so two
        # nodes on one machine would both want its default 52365
        ports = ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        cmd = [_ray_bin(), "start", "--block", "--node-ip-address", self.ip, "--temp-dir", str(self.temp),
               "--resources", f'{{"{self.resource}": 1}}', "--disable-usage-stats", *ports, *args]
        log = (self.root / "ray-start.log").open("w")
        (self.root / "tmp").mkdir(exist_ok=True)
        node_env = {**env, "DETFLOW_HOME": str(self.home), "TMPDIR": str(self.root / "tmp")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=node_env,
                                     start_new_session=True, cwd=self.root)
        return self

    def pid_of(self, program: str) -> int | None:
        """PID of this node's ``program`` (``raylet``, ``gcs_server``) among the node's children."""
        for pid in descendants(self.proc.pid):
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if exe.endswith(f"/{program}"):
                return pid
        return None

    def kill_raylet(self) -> None:
        """SIGKILL this node's raylet: the node dies as a machine loss would take it."""
        pid = self.pid_of("raylet")
        if pid is None:
            raise RuntimeError(f"node {self.name}: no raylet process")
        os.kill(pid, signal.SIGKILL)

    def stop(self, grace: float = 8.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        # `ray start --block` can linger after SIGTERM; workers left behind exit with their raylet.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        shutil.rmtree(self.temp, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass
class RayCluster:
    """A head (``node_a``, no worker processes for Train by default) and worker nodes (``node_b`` …)."""

    root: Path
    env: dict[str, str]
    cpus_per_node: int = 1
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        """GCS address (``ray.init(address=…)``, ``detflow run --address``)."""
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """Jobs API (``detflow submit --address``)."""
        return f"http://{HEAD_IP}:{self.dashboard_port}"

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def node(self, name: str) -> RayNode:
        """The newest node carrying ``node_<name>`` (a replacement takes its predecessor's name)."""
        return [n for n in self.nodes if n.name == name][-1]

    def start(self, workers: int = 1) -> "RayCluster":
        head = RayNode("a", HEAD_IP, self.root / "a0")
        head.start(["--head", "--port", str(self.gcs_port), "--num-cpus", str(self.cpus_per_node),
                    "--dashboard-host", HEAD_IP, "--dashboard-port", str(self.dashboard_port),
                    "--include-dashboard", "true"], self.env)
        self.nodes.append(head)
        self.wait_nodes(1, timeout=90)
        for _ in range(workers):
            self.add_node()
        return self

    def add_node(self, name: str | None = None) -> RayNode:
        """Start one more worker node and wait for it: ``node_b``, ``node_c`` … by default, or ``name``
        to replace a lost node under its name; each on its own IP (127.0.0.3, .4 …)."""
        index = len(self.nodes)
        name = name or chr(ord("a") + index)
        node = RayNode(name, f"127.0.0.{2 + index}", self.root / f"{name}{index}")
        node.start(["--address", self.address, "--num-cpus", str(self.cpus_per_node)], self.env)
        self.nodes.append(node)
        self.wait_nodes(1, timeout=90, required=node.resource)
        return node

    def alive_resources(self) -> set[str]:
        """Custom ``node_*`` resources of the nodes the GCS reports alive (asked in a subprocess, so
        this test process never becomes a Ray driver of the cluster)."""
        code = ("import ray, json; ray.init(address=%r, logging_level='ERROR');"
                "print(json.dumps([k for n in ray.nodes() if n['Alive'] for k in n['Resources'] if k.startswith('node_')]))")
        out = subprocess.run([sys.executable, "-c", code % self.address], capture_output=True, text=True,
                             env=self.env, timeout=60)
        if out.returncode:
            return set()
        import json

        return set(json.loads(out.stdout.strip().splitlines()[-1]))

    def wait_nodes(self, count: int, timeout: float, required: str | None = None) -> None:
        deadline = time.time() + timeout
        alive: set[str] = set()
        while time.time() < deadline:
            for node in self.nodes[-1:]:
                if node.proc.poll() is not None and node.resource == required:
                    raise ServiceUnavailable(f"ray node {node.name} exited: {(node.root / 'ray-start.log').read_text()[-1500:]}")
            alive = self.alive_resources()
            if len(alive) >= count and (required is None or required in alive):
                return
            time.sleep(1.0)
        raise ServiceUnavailable(f"Ray cluster: {sorted(alive)} alive after {timeout:.0f}s, wanted {count}"
                                 f"{' with ' + required if required else ''}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
