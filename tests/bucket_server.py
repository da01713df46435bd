"""An S3-compatible server on 127.0.0.1 for the tests of experiments in a bucket.

moto's server mode (`moto_server`, from `moto[server]` in the dev extra): a real HTTP endpoint
that speaks S3's REST API (signatures, multipart uploads, listings), so carsweep, Ray and
pyarrow talk to it exactly as to AWS, through the standard AWS_* variables; nothing of
carsweep's own is mocked. It keeps its buckets in memory and is stopped at the end of the
session. No carsweep import in here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BucketServer:
    endpoint: str  # http://127.0.0.1:PORT
    pid: int = 0  # moto_server's process (a benchmark reads its memory)

    def environment(self) -> dict[str, str]:
        """The standard variables an S3 client reads (AWS SDK, pyarrow, Ray): the endpoint and
        dummy credentials; the instance-metadata lookup is off, so nothing leaves loopback."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "carsweep-test",
                "AWS_SECRET_ACCESS_KEY": "carsweep-test", "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}


def moto_server_command() -> str:
    """The moto_server beside this Python (the dev install), else the one on PATH."""
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.is_file() else shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server not found: install the dev extra (make install), "
                           "which brings moto[server]")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_bucket_server(log: Path) -> Iterator[BucketServer]:
    """moto_server on 127.0.0.1 and a free port, until the block ends."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([moto_server_command(), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process)
        yield BucketServer(endpoint=f"http://127.0.0.1:{port}", pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} before serving")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port} within "
                       f"{START_TIMEOUT_S:.0f} s")


def create_bucket(server: BucketServer, name: str) -> None:
    """A new, empty bucket (pyarrow's client, told the endpoint itself: its bucket creation
    does not read AWS_ENDPOINT_URL)."""
    _administrator(server).create_dir(name)


def delete_bucket(server: BucketServer, name: str) -> None:
    """The bucket and everything in it gone, as an operator's cleanup would leave a sweep."""
    s3 = _administrator(server)
    s3.delete_dir_contents(name)
    s3.delete_dir(name)


def _administrator(server: BucketServer):
    from pyarrow import fs

    env = server.environment()
    return fs.S3FileSystem(endpoint_override=server.endpoint,
                           access_key=env["AWS_ACCESS_KEY_ID"],
                           secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_REGION"],
                           allow_bucket_creation=True, allow_bucket_deletion=True)

