"""A throwaway S3 server on loopback: moto's server mode (`moto_server`, from PyPI) in a
process of its own, with one bucket. Clients find it through the standard AWS variables
(`env`), as a deployment's workers would find MinIO or S3."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec

from tests.postgres_server import free_port, stop_process


@contextmanager
def s3_server(bucket: str = "clipsieve") -> Iterator[dict]:
    """Yield {endpoint, bucket, env}: `env` holds the AWS variables that point clients at it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "clipsieve-test",
           "AWS_SECRET_ACCESS_KEY": "clipsieve-test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto's S3 server did not start on port {port}")
            time.sleep(0.1)
        server = {"endpoint": endpoint, "bucket": bucket, "env": env}
        bucket_filesystem(server).mkdir(bucket)
        yield server
    finally:
        stop_process(process)


def bucket_filesystem(server: dict) -> fsspec.AbstractFileSystem:
    """An s3fs client of the server that never caches listings (what other workers see)."""
    return fsspec.filesystem("s3", endpoint_url=server["endpoint"], key=server["env"]["AWS_ACCESS_KEY_ID"],
                             secret=server["env"]["AWS_SECRET_ACCESS_KEY"], use_listings_cache=False,
                             skip_instance_cache=True)
