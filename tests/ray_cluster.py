"""A throwaway Ray cluster on loopback: a head that runs no steps (0 CPUs) with the job
server, and worker nodes, each started from a working directory and temporary folder of
its own with the environment a real node would have (its own object-store and instance
credentials). Started with Ray's own `ray start`; `ray stop` takes it down."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.postgres_server import free_port

RAY = str(Path(sys.executable).parent / "ray")


def _ray(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run([RAY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@contextmanager
def ray_cluster(node_env: dict[str, str], workers: int = 2, worker_cpus: int = 1,
                worker_gpus: int = 1) -> Iterator[dict]:
    """Yield {address (the job server's URL), nodes: [their folders]}. `worker_gpus` are
    logical GPUs (Ray schedules by them; this machine has no device behind them)."""
    # A short folder: Ray's socket paths under it must stay within 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port, dashboard = free_port(), free_port()
    env = {**os.environ, **node_env, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    nodes = []
    head = folder / "head"
    head.mkdir(parents=True)
    try:
        _ray(["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--dashboard-host",
              "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true", "--num-cpus", "0",
              "--num-gpus", "0", "--disable-usage-stats"], head, {**env, "TMPDIR": str(head)})
        for n in range(workers):
            node = folder / f"worker{n}"
            (node / "tmp").mkdir(parents=True)
            _ray(["start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus",
                  str(worker_cpus), "--num-gpus", str(worker_gpus), "--disable-usage-stats"],
                 node, {**env, "TMPDIR": str(node / "tmp")})
            nodes.append(node)
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 60
        while True:  # the job server answers once the dashboard is up
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield {"address": address, "nodes": nodes, "head": head}
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
