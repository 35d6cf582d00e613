"""Result images read from the crawl's tars: a tar's member offsets are read once (its
headers only), then each image is one ranged read of the bytes it occupies."""

import tarfile
import threading
from collections import OrderedDict

from resources.crawl import CrawlResource

SHARDS_KEPT = 64  # member tables kept (about 100 bytes a member)


class CrawlImages:
    def __init__(self, crawl: CrawlResource) -> None:
        self.crawl = crawl
        self._members: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def members(self, shard: str) -> dict[str, tuple[int, int]]:
        """member name -> (offset of its data, size), for the regular files of the shard's tar
        (the first of a repeated name, as `samples` reads it). Damage after a member does not
        hide the members before it."""
        with self._lock:
            if shard in self._members:
                self._members.move_to_end(shard)
                return self._members[shard]
        found: dict[str, tuple[int, int]] = {}
        with self.crawl.filesystem().open(self.crawl.file(shard, ".tar"), "rb") as f:
            try:
                with tarfile.open(fileobj=f, mode="r:") as tar:  # seeks past each member's data
                    for member in tar:
                        if member.isfile() and member.name not in found:
                            found[member.name] = (member.offset_data, member.size)
            except tarfile.ReadError:
                pass  # a damaged tail: the members before it are still served
        with self._lock:
            self._members[shard] = found
            while len(self._members) > SHARDS_KEPT:
                self._members.popitem(last=False)
        return found

    def read(self, shard: str, member: str) -> bytes | None:
        """The member's bytes, or None where the tar does not hold it."""
        where = self.members(shard).get(member)
        if where is None:
            return None
        offset, size = where
        with self.crawl.filesystem().open(self.crawl.file(shard, ".tar"), "rb") as f:
            f.seek(offset)
            return f.read(size)
