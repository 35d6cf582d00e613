"""Roots of the lake and the crawl: a local folder or an fsspec URL (s3://, gs://, memory://).

S3 and S3-compatible stores (MinIO, Ceph, moto's server) go through s3fs. The endpoint and
credentials are the resource's fields when set, else AWS's own chain: $AWS_ENDPOINT_URL,
$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role. Directory listings
are never cached: other processes (other workers of a cluster) write under the same
prefixes, and a listing cached by this one would hide their files.

Writes (resources/lake.py): a local folder or an in-memory store gets a temporary file
renamed into place. An object store has no rename, but it publishes an object only when its
upload completes (one PUT, or a multipart upload's completion): the final name is written
directly, and an upload abandoned on error is aborted, so no reader sees part of a file.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import fsspec
from dagster import ConfigurableResource
from pydantic import Field

S3_PROTOCOLS = ("s3", "s3a")


class ObjectStoreFields(ConfigurableResource):
    """Endpoint and credentials for a root on S3-compatible storage (unset: AWS's chain)."""

    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint for an s3:// root, e.g. http://minio:9000 "
        "(unset: $AWS_ENDPOINT_URL, else AWS).")
    s3_access_key_id: str | None = Field(
        default=None, description="Access key for an s3:// root; use an EnvVar (unset: AWS's credential chain: "
        "$AWS_ACCESS_KEY_ID, ~/.aws, an instance role).")
    s3_secret_access_key: str | None = Field(
        default=None, description="Secret key for an s3:// root; use an EnvVar (unset: AWS's credential chain).")

    def open_root(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """(filesystem, root path without a trailing slash) of a folder or URL."""
        protocol = fsspec.core.split_protocol(url)[0]
        options: dict = {}
        if protocol in S3_PROTOCOLS:
            options["use_listings_cache"] = False
            if self.s3_endpoint_url:
                options["endpoint_url"] = self.s3_endpoint_url
            if self.s3_access_key_id or self.s3_secret_access_key:
                options["key"], options["secret"] = self.s3_access_key_id, self.s3_secret_access_key
        fs, root = fsspec.core.url_to_fs(url, **options)
        return fs, root.rstrip("/")


def publishes_on_close(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether a file written to `fs` appears only once its upload completes, and an upload
    can be abandoned (object stores' buffered files): then it is written under its final name."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return not {"file", "local", "memory"} & set(protocols)


@contextmanager
def writing(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[IO[bytes]]:
    """A file opened for writing `path` on an object store that is published when the block
    ends, and abandoned (its upload aborted, nothing published) when the block raises."""
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        discard = getattr(f, "discard", None)
        if discard is not None:
            discard()  # the buffered file forgets its data and aborts a started multipart upload
        raise
    f.close()
