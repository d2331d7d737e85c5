"""A two-node Ray cluster on one machine, every process bound to 127.0.0.1, for the engine tests.

`ray start --head` plus `ray start --address` on one machine make two nodes. Ray rewrites a loopback node address
to the machine's reachable IP (and listens on every interface) unless multi-node clusters are switched off, and it
refuses to start a worker node when they are; so the worker node is started through a small wrapper that keeps the
addresses on loopback while passing that check. Every process of a node shares its process group, so a node is
stopped (or killed mid-job) by signalling its group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # children resolve "localhost" to 127.0.0.1
    "RAY_AUTH_MODE": "token",  # every node and driver authenticates with the token in ~/.ray/auth_token
}
WORKER_NODE = """
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True  # passes `ray start`'s multi-node check ...
services.get_node_ip_address = lambda address=None: "127.0.0.1"  # ... while every address stays on loopback
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""


@dataclass
class Node:
    process: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL every process of the node (a machine failing, not a clean shutdown)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(args: list[str], log: Path) -> Node:
    env = {**os.environ, **LOOPBACK_ENV}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", WORKER_NODE, "start", *args, "--block",
                                    "--disable-usage-stats"], env=env, start_new_session=True, stdout=out,
                                   stderr=subprocess.STDOUT)
    return Node(process, log)


def _wait_for_nodes(address: str, count: int, timeout: float = 90.0) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes")


@contextmanager
def loopback_cluster(tmp: Path, cpus_per_node: int = 1):
    """Head and one worker node on 127.0.0.1; yields (address, worker node). Both are killed on exit, whatever
    happened."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = []
    try:
        nodes.append(_start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus_per_node}",
                             "--include-dashboard=false", f"--ray-client-server-port={free_port()}"], tmp / "head.log"))
        time.sleep(3)
        nodes.append(_start([f"--address={address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}"],
                            tmp / "worker.log"))
        yield address, nodes[1]
    finally:
        for node in reversed(nodes):
            node.kill()


@contextmanager
def driver(address: str, nodes: int = 2):
    """This process connected to the cluster as a driver (on loopback), disconnected on exit."""
    import ray

    from enclip.ray_cluster import ray_session

    with ray_session(address):
        _wait_for_nodes(address, nodes)
        yield ray
