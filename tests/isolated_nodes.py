"""Ray worker nodes with disks of their own: each in its own mount namespace, on loopback.

A real cluster's nodes each have a local disk, so a folder at one path holds different files
on each node. Here a worker node is a subprocess run under `unshare --mount --propagation
private` that mounts a tmpfs over some folders, then starts a raylet exactly as
`ray.cluster_utils.Cluster.add_node` does (`ray._private.node.Node(..., head=False)`). The
raylet and every worker process it forks inherit the namespace: a trial on that node sees its
own empty folder where the test process and the other nodes see theirs. Everything else (the
dataset, /dev/shm for the object store) is the machine's and is shared, as NFS would be.

Needs root (tmpfs mounts) and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback only), both of
which the tests have.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Run inside the namespace: mount the tmpfs folders, start the raylet, print its node id,
# then keep it alive until told to stop (SIGTERM or stdin closed).
NODE_SCRIPT = r"""
import json, os, signal, subprocess, sys, threading
spec = json.loads(sys.argv[1])
for folder in spec["private"]:
    os.makedirs(folder, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={spec['tmpfs_bytes']}", "tmpfs",
                    folder], check=True)
for folder, source in spec["fill"].items():
    subprocess.run(["cp", "-a", f"{source}/.", folder], check=True)
import ray._private.node
from ray._private.parameter import RayParams
params = RayParams(gcs_address=spec["gcs_address"], node_ip_address="127.0.0.1",
                   num_cpus=spec["num_cpus"], num_gpus=spec["num_gpus"],
                   resources=spec["resources"],
                   object_store_memory=spec["object_store_memory"], min_worker_port=0,
                   max_worker_port=0, include_log_monitor=False, node_manager_port=0)
params.dashboard_agent_listen_port = None
node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True)
print(json.dumps({"node_id": node.node_id}), flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
stop.wait()
node.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
"""


@dataclass
class IsolatedNode:
    """A worker node in its own mount namespace; `private` folders are its own tmpfs."""

    node_id: str
    private: tuple[Path, ...]
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def can_isolate() -> bool:
    """Mount namespaces need root and the `unshare` command."""
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def start_isolated_node(gcs_address: str, private: list[Path], *, num_cpus: int = 1,
                        num_gpus: float = 0, resources: dict | None = None,
                        fill: dict[Path, Path] | None = None,
                        tmpfs_bytes: int = 256 * 1024**2,
                        object_store_memory: int = 80 * 1024**2,
                        environment: dict[str, str] | None = None) -> IsolatedNode:
    """Start a worker node joining the cluster at `gcs_address` with its own tmpfs over each
    folder of `private`; returns once the raylet is up. `fill` maps some of those folders
    to a folder whose files are copied into the node's own copy (a different file at the
    same path on that node only); `environment` sets variables on that node only."""
    spec = {"gcs_address": gcs_address, "private": [str(p) for p in private],
            "fill": {str(k): str(v) for k, v in (fill or {}).items()},
            "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources or {},
            "tmpfs_bytes": tmpfs_bytes, "object_store_memory": object_store_memory}
    for folder in private:
        Path(folder).mkdir(parents=True, exist_ok=True)  # the mount point, on the shared disk
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(environment or {})}
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", NODE_SCRIPT,
         json.dumps(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=30)
        raise RuntimeError(f"the isolated node did not start (exit {process.returncode})")
    return IsolatedNode(node_id=json.loads(line)["node_id"], private=tuple(private),
                        process=process)
