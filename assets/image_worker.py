"""check_image in a worker process, under a per-image time budget.

assets/images.py bounds the work a decode may cost from what the header says (bytes,
pixels, aspect ratio, JPEG scans). A decoder can still be slow or crash on bytes no bound
foresaw, and C code in a thread cannot be stopped; a process can. So `samples`, the first
step that decodes a crawl image, checks each one in a worker: an image not checked within
the budget, or one that kills the worker, is refused with that reason and the worker is
replaced. Later steps decode only images that passed here.

Workers are forked from a forkserver that has imported the image code already, so
starting one costs milliseconds, and no worker inherits the step's threads.
"""

import multiprocessing
from multiprocessing.connection import Connection

from assets.images import check_image


def _serve(connection: Connection) -> None:
    while True:
        try:
            data = connection.recv_bytes()
        except EOFError:
            return
        connection.send(check_image(data))


class ImageCheckWorker:
    """`check(data)`: check_image's answer, computed in a worker process within
    `seconds` per image; `seconds` <= 0 checks in this process with no budget."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: Connection | None = None

    def __enter__(self) -> "ImageCheckWorker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> Connection:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["assets.images"])
        ours, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs,), name="image-check", daemon=True)
        self._process.start()
        theirs.close()
        self._connection = ours
        return ours

    @property
    def pid(self) -> int | None:
        """The worker's process id, while one runs."""
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None

    def _kill(self) -> int | None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()
        if process is not None:
            process.join()
        code = process.exitcode if process is not None else None
        if self._connection is not None:
            self._connection.close()
        self._process, self._connection = None, None
        return code

    def check(self, data: bytes) -> str | None:
        """None if `data` reads as an image, else the reason it does not."""
        if self.seconds <= 0:
            return check_image(data)
        connection = self._connection or self._start()
        try:
            connection.send_bytes(data)
            if connection.poll(self.seconds):
                return connection.recv()
        except (EOFError, OSError):  # the worker died on this image: the answer is the crash
            code = self._kill()
            return f"the image decoder crashed on this image (worker exit code {code}); not read"
        self._kill()
        return f"image not checked within the {self.seconds:g} s per-image budget; not read"
