"""A real `clipsieve serve` process for the tests, and a venv with clip-retrieval's client."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path

from tests.postgres_server import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
CLIP_CLIENT_VENV = REPO / ".venv-clipclient"  # gitignored; made once per checkout
CLIP_RETRIEVAL = "clip-retrieval==2.45.0"


@contextmanager
def serve_process(lake: Path, crawl: Path, policy_dir: Path, cache_dir: Path) -> Iterator[str]:
    """`clipsieve serve` on a free loopback port until the block ends; its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "orchestration.cli", "serve", "--lake", str(lake), "--crawl", str(crawl),
               "--port", str(port), "--policy-dir", str(policy_dir), "--cache-dir", str(cache_dir)]
    log = cache_dir / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/indices-list", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"clipsieve serve did not start:\n{log.read_text()}") from None
                time.sleep(0.5)
        yield url
    finally:
        stop_process(process, timeout=20)


def clip_client_python() -> Path:
    """The python of a venv holding clip-retrieval (its package only: the client needs nothing
    but requests; the full install pulls several GB of CUDA wheels), made on first use."""
    python = CLIP_CLIENT_VENV / "bin" / "python"
    stamp = CLIP_CLIENT_VENV / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CLIP_CLIENT_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "setuptools<70", "requests"], check=True)
        subprocess.run([*pip, "--no-deps", CLIP_RETRIEVAL], check=True)
        stamp.write_text(CLIP_RETRIEVAL)
    return python


def post(url: str, body: object, headers: dict | None = None) -> tuple[int, Message, object]:
    """(status, headers, JSON body) of a POST with a JSON body (no Content-Type unless given)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"null")
