"""Which process wrote something, and whether it is still running.

Temporary lake files and Dagster runs carry their writer's host and pid, so a later run
can tell the leftovers of a killed process (safe to remove or mark failed) from the work
of a process still running beside it.
"""

import os
import socket


def this_process() -> tuple[str, int]:
    """(host name, pid) of the current process."""
    return socket.gethostname(), os.getpid()


def is_gone(host: str, pid: int) -> bool:
    """True only when `pid` on `host` is certainly not running: it is this host, and the pid
    is unused or a zombie. Another host's process is never judged (False)."""
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's live process
        return False
    try:  # a killed child its parent has not reaped yet still answers signal 0
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
