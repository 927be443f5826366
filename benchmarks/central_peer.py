"""A real central node for the benchmarks and the tests: ``bedside central serve`` from its own venv
(``make central``: Triton's server core through nvidia-pytriton, numpy < 2) on free loopback ports,
its output in a log file, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loopback import free_ports
from models.bundle import default_bundles_dir

ROOT = Path(__file__).resolve().parent.parent
CENTRAL_BEDSIDE = ROOT / ".venv-central" / "bin" / "bedside"
READY = re.compile(r"Bedside central node ready at (http://\S+)")
START_TIMEOUT_S = 180  # Triton starts in 8-15 s here; much more while models train beside it
SHIPPED = [default_bundles_dir() / "chest-xray-pneumonia", default_bundles_dir() / "skin-lesion-triage"]


def missing_venv() -> str | None:
    """Why no node can start here, or None."""
    if not CENTRAL_BEDSIDE.exists():
        return f"the central node's venv is missing ({CENTRAL_BEDSIDE}): run make central"
    return None


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Triton's server is the node's child)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: Triton's server, and the Python-backend stub of each model instance."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


@dataclass
class Node:
    process: subprocess.Popen
    url: str
    log: Path
    http_port: int
    metrics_port: int
    tiny: Path | None = None  # the session node's tiny bundle (tests/conftest.py)

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def counter(self, metric: str, model: str) -> float:
        """One of Triton's counters for ``model`` (``nv_inference_count``, ``nv_inference_exec_count``,
        ...), read from the node's metrics port."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(rf'^{metric}{{model="{model}",version="\d+"}} (\S+)$', text, re.M)
        if found is None:
            raise RuntimeError(f"the node's metrics lack {metric} for {model}")
        return float(found.group(1))

    def triton_pid(self) -> int:
        pids = [p for p in children(self.process.pid) if "tritonserver" in Path(f"/proc/{p}/cmdline").read_text()]
        if len(pids) != 1:
            raise RuntimeError(f"expected one tritonserver under the node, found {pids}")
        return pids[0]

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def node_command(bundles: list[Path], ports: list[int], *extra: str) -> list[str]:
    args = [str(CENTRAL_BEDSIDE), "central", "serve", "--host", "127.0.0.1", "--port", str(ports[0]),
            "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), *extra]
    for b in bundles:
        args += ["--bundle", str(b)]
    return args


def start_node(bundles: list[Path], workdir: Path, *extra: str) -> Node:
    """A node that has printed its ready line; RuntimeError with its log if it exits or never does."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(3)
    log = workdir / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(node_command(bundles, ports, *extra), cwd=workdir, stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = READY.search(log.read_text(errors="replace"))
        if found:
            return Node(proc, found.group(1).rstrip("/"), log, ports[0], ports[2])
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    proc.wait(30)
    raise RuntimeError(f"the central node did not start:\n{log.read_text(errors='replace')[-4000:]}")
