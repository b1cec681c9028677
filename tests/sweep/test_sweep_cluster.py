"""A two-node Ray cluster on this machine (``ray start --head`` plus one ``ray start --address`` worker, both on
loopback, started and stopped here): joined with ``address``, the sweep runs cells on both nodes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray

from difftori.sweep.grid import rl_grid
from difftori.sweep.runner import SweepOptions, run_sweep

from .helpers import TINY_RL


RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Node:
    """``ray start ... --block`` in its own session; stopping it ends the node's processes (and only those)."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([RAY, "start", *args, "--block", "--disable-usage-stats"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True, env=dict(os.environ))
        self.out: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.out.append(line)
            if "block forever" in line:
                self.ready.set()

    def wait(self, timeout: float = 90) -> None:
        if not self.ready.wait(timeout):
            raise RuntimeError("ray start did not come up:\n" + "".join(self.out[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # `ray start --block` stops the processes it started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:  # whatever is left of the node: the process group this test created for it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_node_cluster_runs_cells_on_both_nodes(tmp_path, monkeypatch):
    if ray.is_initialized():
        ray.shutdown()
    # A loopback cluster: no token authentication, the same for both nodes and the sweep (Ray >= 2.5x enables it
    # on the head only when a token file exists, and a worker without it cannot join).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--object-store-memory", str(100 * 2**20)]
    head = _Node(["--head", "--port", str(port), "--include-dashboard", "false", *common])
    nodes = [head]
    try:
        head.wait()
        worker = _Node(["--address", f"127.0.0.1:{port}", *common])
        nodes.append(worker)
        worker.wait()
        cells = rl_grid(["cartpole-balance"], ["tdmpc"], [1, 2], 96, options=TINY_RL)
        # Each node has 1 CPU and each cell needs 1: the two cells can only run at once on different nodes.
        states = run_sweep(cells, tmp_path / "sweep", SweepOptions(address=f"127.0.0.1:{port}", progress_s=60),
                           log=lambda m: None, report=False)
        assert [s["status"] for s in states.values()] == ["done", "done"], states
        assert len({s["node_id"] for s in states.values()}) == 2
        assert not ray.is_initialized()  # the sweep disconnected; the cluster is still ours to stop
    finally:
        for n in reversed(nodes):
            n.stop()
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # written by our head: ray.init() would try it
        if current.exists() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
