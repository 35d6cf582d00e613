"""The pooled SQLite event log: same files and records as Dagster's own, across runs, forks and wipes."""

import multiprocessing
import shutil

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, MaterializeResult, asset, materialize
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from orchestration import event_log
from orchestration.event_log import PooledSqliteEventLogStorage
from orchestration.instance import open_instance
from orchestration.partitions import shard_partitions


@asset(partitions_def=shard_partitions)
def counted(context) -> MaterializeResult:
    return MaterializeResult(metadata={"shard": context.partition_key})


def _materialize(instance, shard: str) -> None:
    assert materialize([counted], instance=instance, partition_key=shard).success


def test_a_new_home_writes_through_the_pool_and_dagsters_own_storage_reads_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # open_instance sets it; restored after the test
    instance = open_instance(str(tmp_path / "home"))
    try:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        instance.add_dynamic_partitions("shards", ["a", "b"])
        for shard in ("a", "b", "a"):
            _materialize(instance, shard)
        pooled = instance.get_latest_storage_id_by_partition(AssetKey("counted"),
                                                             DagsterEventType.ASSET_MATERIALIZATION)
    finally:
        instance.dispose()
    plain = SqliteEventLogStorage(base_dir=str(tmp_path / "home" / "history" / "runs"))
    assert plain.get_latest_storage_id_by_partition(AssetKey("counted"),
                                                    DagsterEventType.ASSET_MATERIALIZATION) == pooled
    assert set(pooled) == {"a", "b"} and pooled["a"] > pooled["b"]  # a's second materialization is the latest


def test_engines_stay_capped_over_many_runs_and_a_wipe_starts_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setattr(event_log, "MAX_ENGINES", 3)
    instance = open_instance(str(tmp_path / "home"))
    try:
        instance.add_dynamic_partitions("shards", ["a"])
        for _ in range(5):  # five runs: five run databases besides the index
            _materialize(instance, "a")
        storage = instance.event_log_storage
        assert len(storage._engines) == 3 and len(storage.get_all_run_ids()) == 5
        storage.wipe()
        # no engine of a deleted run database is left (the index's is reopened to empty it)
        assert set(storage._engines) <= {"index"} and storage.get_all_run_ids() == []
        instance.add_dynamic_partitions("shards", ["a"])  # partitions were wiped with the rest
        _materialize(instance, "a")  # and the wiped storage takes new runs
        assert instance.get_latest_storage_id_by_partition(AssetKey("counted"),
                                                           DagsterEventType.ASSET_MATERIALIZATION).keys() == {"a"}
    finally:
        instance.dispose()


def test_a_forked_process_writes_through_engines_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = open_instance(str(tmp_path / "home"))
    try:
        instance.add_dynamic_partitions("shards", ["a", "b"])
        _materialize(instance, "a")  # the parent's engines are open now
        # the forked child inherits the instance with those engines: it must open its own
        child = multiprocessing.get_context("fork").Process(target=_materialize, args=(instance, "b"))
        child.start()
        child.join(120)
        assert child.exitcode == 0
        _materialize(instance, "a")  # and the parent's still work after the child's writes
        latest = instance.get_latest_storage_id_by_partition(AssetKey("counted"),
                                                             DagsterEventType.ASSET_MATERIALIZATION)
        assert set(latest) == {"a", "b"} and latest["a"] > latest["b"]
    finally:
        instance.dispose()


def test_the_home_opens_by_path_alone_and_a_moved_home_says_what_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    home = tmp_path / "home"
    instance = open_instance(str(home))
    instance.add_dynamic_partitions("shards", ["a"])
    _materialize(instance, "a")
    instance.dispose()
    monkeypatch.delenv("DAGSTER_HOME")  # as bench/pipeline.py reads a run's instance afterwards
    with DagsterInstance.from_config(str(home)) as again:
        assert again.get_materialized_partitions(AssetKey("counted")) == {"a"}
    shutil.move(home, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="base_dir"):
        DagsterInstance.from_config(str(tmp_path / "moved"))
