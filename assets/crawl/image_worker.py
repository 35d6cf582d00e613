"""check_image in a worker process, under a per-image time budget.

assets/crawl/images.py bounds the work a decode may cost from what the header says (bytes,
pixels, aspect ratio, JPEG scans). A decoder can still be slow or crash on bytes no bound
foresaw, and C code in a thread cannot be stopped; a process can. So `samples`, the first
step that decodes a crawl image, checks each one in a worker: an image not checked within
the budget, or one that kills the worker, is refused with that reason and the worker is
replaced. Later steps decode only images that passed here.

The worker is `python -m assets.crawl.image_worker`, a plain child process (no fork of the step
with its threads, no re-import of the caller's main module), started on the first image
(about 0.4 s) and kept for every shard the step reads. Each request is an 8-byte length and
the image bytes on its stdin; each answer one JSON line on its stdout.
"""

import json
import select
import struct
import subprocess
import sys
from typing import IO

from assets.crawl.images import check_image

_LENGTH = struct.Struct("<Q")


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The worker's loop: check each image sent until the input closes."""
    while True:
        try:
            (size,) = _LENGTH.unpack(_read_exactly(requests, _LENGTH.size))
            data = _read_exactly(requests, size)
        except EOFError:
            return
        answers.write(json.dumps({"error": check_image(data)}).encode() + b"\n")
        answers.flush()


class ImageCheckWorker:
    """`check(data)`: check_image's answer, computed in a worker process within
    `seconds` per image; `seconds` <= 0 checks in this process with no budget."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "ImageCheckWorker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The worker's process id, while one runs."""
        return self._process.pid if self._process is not None else None

    def _start(self) -> subprocess.Popen:
        self._process = subprocess.Popen([sys.executable, "-m", "assets.crawl.image_worker"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._process

    def close(self) -> None:
        """Stop the worker (it ends when its input closes)."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            process.kill()
            process.wait()
        process.stdout.close()

    def _kill(self) -> int:
        process, self._process = self._process, None
        process.kill()
        code = process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return code

    def check(self, data: bytes) -> str | None:
        """None if `data` reads as an image, else the reason it does not."""
        if self.seconds <= 0:
            return check_image(data)
        process = self._process or self._start()
        ready = []
        try:
            process.stdin.write(_LENGTH.pack(len(data)) + data)
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], self.seconds)
            if ready:
                line = process.stdout.readline()
                if line:
                    return json.loads(line)["error"]
        except (BrokenPipeError, OSError):
            pass
        if process.poll() is not None or ready:  # it died on this image: the answer is the crash
            return f"the image decoder crashed on this image (worker exit code {self._kill()}); not read"
        self._kill()
        return f"image not checked within the {self.seconds:g} s per-image budget; not read"


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
