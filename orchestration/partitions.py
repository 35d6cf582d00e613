"""Partitions: one dynamic partition per crawl shard (its file stem, e.g. "00000")."""

from dagster import DynamicPartitionsDefinition

shard_partitions = DynamicPartitionsDefinition(name="shards")
