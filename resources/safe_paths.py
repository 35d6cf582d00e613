"""Names from the crawl (shard names, sample keys) and from users (policy names) become
paths in the lake, in export folders and inside exported tars. The crawl is untrusted and
Dagster's UI lets anyone add a partition with any name, so each such name is checked
where it enters: it must be one plain path component, never `..`, `/abs` or `a/b`.
"""

import hashlib
import posixpath
import re

# One path component: starts with a letter or digit (so never "." or ".."), no separators.
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# A webdataset sample key: like a component, but without dots, because webdataset splits
# a member name at its first dot into key and extension.
_SAMPLE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_POLICY = re.compile(r"^[a-z][a-z0-9_]*$")


class UnsafeNameError(ValueError):
    """A name that could point outside the folder it is meant to stay in."""


def check_shard_name(name: str) -> str:
    """`name` if it is a safe shard name (a crawl file stem such as "00000"), else UnsafeNameError."""
    if not isinstance(name, str) or not _COMPONENT.match(name):
        raise UnsafeNameError(f"unsafe shard name {name!r}: a shard name must be one path component of "
                              "letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def split_shard_names(names: list[str]) -> tuple[list[str], list[str]]:
    """(safe, unsafe) shard names, in the given order: a sensor skips the unsafe ones."""
    safe = [n for n in names if isinstance(n, str) and _COMPONENT.match(n)]
    return safe, [n for n in names if n not in safe]


def check_policy_name(name: str) -> str:
    """`name` if it is a policy name (lower_snake_case, as policy files are named), else UnsafeNameError."""
    if not isinstance(name, str) or not _POLICY.match(name):
        raise UnsafeNameError(f"unsafe policy name {name!r}: policy names are lower_snake_case")
    return name


def check_relative(path: str) -> str:
    """`path` if it is relative and stays below its root (no leading '/', no '..' part).

    For resources/lake.py: LakeResource.path() and friends should pass `relative` through
    this, so no name built into a lake path can leave the lake root.
    """
    if not isinstance(path, str) or "\\" in path or "\0" in path:
        raise UnsafeNameError(f"unsafe relative path {path!r}")
    if path.startswith("/") or ".." in path.split("/") or posixpath.normpath(path or ".").startswith(".."):
        raise UnsafeNameError(f"unsafe relative path {path!r}: it must stay below its root")
    return path


def member_stem(key: str) -> str:
    """The name an exported sample gets in a tar and in the export's parquet.

    A crawl key that is a plain webdataset key (all img2dataset keys are digits) is kept;
    any other key (`../../evil`, `/abs`, `a.b`, empty) becomes `unsafe_<md5 of the key>`,
    so the member name is always relative, has no '..', and is unique per key.
    """
    if isinstance(key, str) and _SAMPLE_KEY.match(key):
        return key
    digest = hashlib.md5(str(key).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return f"unsafe_{digest}"


def check_member_name(name: str) -> str:
    """`name` if it is safe as a tar member name: one relative component, no '..'."""
    if not _COMPONENT.match(name) or ".." in name:
        raise UnsafeNameError(f"unsafe tar member name {name!r}")
    return name
