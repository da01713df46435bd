"""A Ray that carsweep starts itself listens on 127.0.0.1 only, whatever the shell exported.

Ray decides at import time whether 127.0.0.1 may be used (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER);
without the variable a local Ray asked for 127.0.0.1 binds the machine's network address.
The test runs a local sweep session in a fresh interpreter whose environment lacks the
variable and that imports ray before carsweep does, as a user's script might.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SESSION = """
import json, ray
from carsweep.config.sweep import ClusterConfig
from carsweep.search.cluster import ray_session
with ray_session(ClusterConfig(num_cpus=1)):
    nodes = [n["NodeManagerAddress"] for n in ray.nodes()]
    print(json.dumps({"nodes": nodes, "gcs": ray.get_runtime_context().gcs_address}))
"""


@pytest.mark.slow
def test_a_local_ray_binds_loopback_even_if_the_variable_was_not_exported():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run([sys.executable, "-c", SESSION], capture_output=True, text=True,
                          env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["nodes"] == ["127.0.0.1"]
    assert found["gcs"].startswith("127.0.0.1:")
