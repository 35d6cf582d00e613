"""Open the Dagster instance at a DAGSTER_HOME folder, safely from parallel processes.

Dagster creates a SQLite instance's databases (runs.db, the event log's index.db, the
schedules db) the first time the instance is opened. Processes opening a fresh folder at
the same moment race in that step: measured with 4 processes, one fails with "table
run_tags already exists" and runs.db is left with two alembic heads, so every later open
fails ("Version table 'alembic_version' has more than one head present"). Opening under an
exclusive file lock makes the first process create them and the others find them made.
"""

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

LOCK_NAME = ".clipsieve-instance.lock"
# Telemetry off; the event log keeps its SQLite engines open (orchestration/event_log.py)
# and its files where Dagster's default storage would, in the home's history/runs.
EVENT_LOG_DIR = Path("history", "runs")


def default_config(home: str) -> str:
    """dagster.yaml of a new instance folder `home` (an absolute path)."""
    return f"""\
telemetry:
  enabled: false
event_log_storage:
  module: orchestration.event_log
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {json.dumps(str(Path(home, EVENT_LOG_DIR)))}
"""


def write_default_config(home: str) -> None:
    """A new instance folder: its dagster.yaml and its event log folder."""
    Path(home, EVENT_LOG_DIR).mkdir(parents=True, exist_ok=True)
    Path(home, "dagster.yaml").write_text(default_config(str(Path(home).resolve())))


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
    """The instance at `home`; a new folder gets clipsieve's dagster.yaml (default_config).
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
