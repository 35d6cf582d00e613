"""Open the Dagster instance at a DAGSTER_HOME folder, safely from parallel processes.

Dagster creates a SQLite instance's databases (runs.db, the event log's index.db, the
schedules db) the first time the instance is opened. Processes opening a fresh folder at
the same moment race in that step: measured with 4 processes, one fails with "table
run_tags already exists" and runs.db is left with two alembic heads, so every later open
fails ("Version table 'alembic_version' has more than one head present"). Opening under an
exclusive file lock makes the first process create them and the others find them made.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

LOCK_NAME = ".clipsieve-instance.lock"
# A new instance folder gets Dagster's default storage (SQLite in the folder) with telemetry
# off, and runs start as soon as they are launched: Dagster's default run coordinator queues
# them for a dagster-daemon, which a laptop or a CI machine does not run. A deployment with
# a daemon sets the QueuedRunCoordinator (deploy/dagster.yaml) for its concurrency limits.
DEFAULT_CONFIG = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""


def write_default_config(home: str) -> None:
    """A new instance folder's dagster.yaml."""
    Path(home, "dagster.yaml").write_text(DEFAULT_CONFIG)


@contextmanager
def home_lock(home: str) -> Iterator[None]:
    """An exclusive lock on the DAGSTER_HOME folder, held while the block runs."""
    with open(Path(home, LOCK_NAME), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_instance(home: str) -> DagsterInstance:
    """The instance at `home`; a new folder gets clipsieve's dagster.yaml (DEFAULT_CONFIG).
    Sets DAGSTER_HOME for this process, as `DagsterInstance.get()` reads it."""
    home = str(Path(home).resolve())
    os.makedirs(home, exist_ok=True)
    os.environ["DAGSTER_HOME"] = home
    with home_lock(home):
        if not any(p.name != LOCK_NAME for p in Path(home).iterdir()):  # fresh: nothing but our lock
            write_default_config(home)
        instance = DagsterInstance.get()
        instance.get_dynamic_partitions("shards")  # touch the event log's index db while locked
    return instance
