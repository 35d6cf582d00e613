"""The asset keys of a policy's subset, index and audit.

`laion400m_subset`, `laion400m_index`, `laion400m_audit`: the Dagster graph labels a node
with the last part of its key, so each key says both the policy and what the asset is. The
assets' groups (subsets, indices, audits) and the lake's folders keep the kinds apart.
"""

from dagster import AssetKey

KINDS = ("subset", "index", "audit")


def subset_key(policy: str) -> AssetKey:
    return AssetKey(f"{policy}_subset")


def index_key(policy: str) -> AssetKey:
    return AssetKey(f"{policy}_index")


def audit_key(policy: str) -> AssetKey:
    return AssetKey(f"{policy}_audit")


def policy_asset(key: AssetKey) -> tuple[str, str] | None:
    """(policy, kind) of a policy asset's key; None for any other asset."""
    policy, _, kind = key.path[-1].rpartition("_")
    return (policy, kind) if len(key.path) == 1 and policy and kind in KINDS else None
