"""Lineage: where a sample or a subset came from (`clipsieve explain`, `clipsieve lineage`).

explain   one sample: its crawl row (shard, tar member, url, caption, status), every
          score and which head (file or zero-shot prompts) gave punsafe, pwatermark,
          aesthetic and ptext, each policy's decision and, when dropped, the WHERE clauses it
          fails (the policy's top-level AND terms, split by DuckDB's own parser), its
          preference pairs with each candidate caption's outcome and the rule behind it, and
          the Dagster run and materialization behind each of its files.
lineage   one subset: shards, model, SQL hash and parameters, member count, and the runs
          that produced the subset, its index and its audit.
"""

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from assets.definitions.policy_keys import audit_key, index_key, policy_asset, subset_key
from assets.subsets import Policy, effective_params
from resources.catalog import Catalog, read_sql
from resources.heads import HEADS
from resources.lake import LakeResource, score_path


def where_clauses(catalog: Catalog, policy: Policy) -> list[tuple[str, str]]:
    """(clause, single-clause SELECT) for each top-level AND term of the policy's WHERE."""
    connection = catalog.connection
    select = connection.extract_statements(policy.sql)[-1].query
    tree = json.loads(connection.execute("SELECT json_serialize_sql(?)", [select]).fetchone()[0])
    if tree.get("error"):
        return []
    where = tree["statements"][0]["node"].get("where_clause")
    if not where:
        return []
    terms = where["children"] if where.get("type") == "CONJUNCTION_AND" else [where]
    clauses = []
    for term in terms:
        single = copy.deepcopy(tree)
        single["statements"][0]["node"]["where_clause"] = term
        sql = connection.execute("SELECT json_deserialize_sql(?)", [json.dumps(single)]).fetchone()[0]
        clauses.append((sql.rsplit(" WHERE ", 1)[-1], sql))
    return clauses


def _with_values(clause: str, params: dict[str, Any]) -> str:
    """The clause with getvariable('x') shown as x's value."""
    return re.sub(r"getvariable\('(\w+)'\)", lambda m: repr(params.get(m.group(1), m.group(0))), clause)


def policy_decision(catalog: Catalog, policy: Policy, params: dict[str, Any], key: str, shard: str,
                    kept: bool) -> dict[str, Any]:
    if kept:
        return {"kept": True}
    connection = catalog.connection
    for name, value in params.items():
        connection.execute(f"SET VARIABLE {name} = ?", [value])
    failing = []
    for clause, sql in where_clauses(catalog, policy):
        connection.execute(f"CREATE OR REPLACE TEMP VIEW clause_result AS {sql}")
        passes = connection.execute(read_sql("lineage/clause.sql"), {"key": key, "shard": shard}).fetchone()[0]
        if not passes:
            failing.append(_with_values(clause, params))
    if failing:
        return {"kept": False, "dropped_by": failing}
    return {"kept": False, "dropped_by": ["the policy's selection beyond its WHERE clauses (ranking, sampling "
                                          "or joins), see sql/policies/" + policy.name + ".sql"]}


def _materialization(instance: DagsterInstance, asset: str, partition: str | None) -> dict[str, Any] | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey.from_user_string(asset),
                           asset_partitions=[partition] if partition else None), limit=1).records
    if not records:
        return None
    record = records[0]
    event = record.asset_materialization
    path = event.metadata.get("path")
    return {
        "run_id": record.run_id,
        "materialized_at": datetime.fromtimestamp(record.timestamp, UTC).isoformat(),
        "code_version": event.tags.get("dagster/code_version"),
        "path": getattr(path, "value", path),
    }


def head_sources(lake: LakeResource, shard: str, model_id: str) -> dict[str, dict[str, str]]:
    """Which head gave each head score of a shard, as its score file records it."""
    sources = {}
    for name, (column, _) in HEADS.items():
        path = score_path(shard, name, model_id)
        if lake.exists(path):
            recorded = lake.parquet_metadata(path)
            sources[column] = {k.removeprefix("head_"): v for k, v in recorded.items() if k.startswith("head_")}
    return sources


def explain(catalog: Catalog, key: str, policies: list[Policy], calibration: dict[str, dict[str, Any]],
            instance: DagsterInstance | None, lake: LakeResource | None = None,
            model_id: str | None = None) -> dict[str, Any]:
    """Everything known about one sample, from crawl row to each policy's decision (with the
    lake and model id: which heads gave its head scores)."""
    rows = catalog.query(read_sql("lineage/sample.sql"), {"key": key}).to_pylist()
    if not rows:
        raise ValueError(f"no sample with key {key!r} in the lake")
    sample = rows[0]
    shard = sample["shard"]
    scores = catalog.query(read_sql("lineage/scores.sql"), {"key": key}).to_pylist()
    members = {r["policy"]: r["draws"]
               for r in catalog.query(read_sql("lineage/membership.sql"), {"key": key}).to_pylist()}
    materialized = {r["policy"] for r in catalog.query(read_sql("lineage/policies.sql")).to_pylist()}
    result: dict[str, Any] = {"key": key, "shard": shard, "tar_member": sample.get("tar_member"),
                              "url": sample.get("url"), "caption": sample.get("caption"),
                              "status": sample.get("status"), "image_status": sample.get("image_status"),
                              "image_error": sample.get("image_error")}
    if scores:
        result["scores"] = {k: v for k, v in scores[0].items() if k not in ("key", "shard", "url", "caption")}
        if lake is not None and model_id is not None:
            result["heads"] = head_sources(lake, shard, model_id)
    decisions = {}
    for policy in policies:
        if policy.name not in materialized:
            continue
        if not scores:
            decisions[policy.name] = {"kept": False, "dropped_by": [
                f"never scored: image_status {sample.get('image_status')} ({sample.get('image_error')})"]}
            continue
        params = effective_params(policy, calibration)
        decisions[policy.name] = policy_decision(catalog, policy, params, key, shard, policy.name in members)
        if policy.name in members and "sampling" in params:  # a multiset: how often it was drawn
            decisions[policy.name]["draws"] = members[policy.name]
    result["policies"] = decisions
    if catalog.has_view("preference_pairs") and catalog.has_view("caption_candidates"):
        result["preference"] = preference_reasons(catalog, key, shard)
    if instance is not None:
        # Every asset the instance has materialized for this shard's partition.
        per_shard = {key.to_user_string(): _materialization(instance, key.to_user_string(), shard)
                     for key in sorted(instance.get_asset_keys(), key=lambda k: k.to_user_string())
                     if policy_asset(key) is None}
        result["materializations"] = {
            **{asset: found for asset, found in per_shard.items() if found is not None},
            **{subset_key(p).to_user_string(): _materialization(instance, subset_key(p).to_user_string(), None)
               for p in decisions},
        }
    return result


def preference_reasons(catalog: Catalog, key: str, shard: str) -> dict[str, Any]:
    """An image's pairs, the rule that stopped it if one did, and each candidate's outcome."""
    image = catalog.query(read_sql("lineage/preference_image.sql"), {"key": key, "shard": shard}).to_pylist()
    return {
        "pairs": [{k: r[k] for k in ("pair", "chosen", "rejected", "margin")} for r in image if r["kind"] == "pair"],
        "dropped_by": [{"reason": r["reason"], "detail": r["detail"]} for r in image if r["kind"] == "dropped"],
        "candidates": catalog.query(read_sql("lineage/preference.sql"), {"key": key, "shard": shard}).to_pylist(),
    }


def subset_lineage(catalog: Catalog, policy: str, instance: DagsterInstance | None) -> dict[str, Any]:
    """Which shards, model, SQL and runs produced a subset, its index and its audit."""
    shards = catalog.query(read_sql("lineage/subset_shards.sql"), {"policy": policy}).to_pylist()
    if not shards:
        raise ValueError(f"no subset {policy!r} in the lake")
    result: dict[str, Any] = {"policy": policy, "members": sum(s["members"] for s in shards),
                              "shards": {s["shard"]: s["members"] for s in shards}}
    if instance is not None:
        for group, key in (("subsets", subset_key(policy)), ("indices", index_key(policy)),
                           ("audits", audit_key(policy))):
            records = instance.fetch_materializations(key, limit=1).records
            if records:
                metadata = records[0].asset_materialization.metadata
                result[group] = {
                    **_materialization(instance, key.to_user_string(), None),
                    **{k: getattr(metadata[k], "value", metadata[k]) for k in
                       ("model_id", "sql_hash", "params", "factory", "recall_at_10") if k in metadata},
                }
    return result
