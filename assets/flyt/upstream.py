"""The upstream pairs FLYT trains on: an even sample of the scored pool's embedded pairs, with
their image bytes from the crawl, their captions, and the embeddings the scorer reads.

At most `max_pairs` pairs, drawn evenly from every shard (a pool of billions trains its scorer
on a sample, as FLYT trains on a part of DataComp's pool); one shard's files are read at a
time, and only the drawn pairs' images are kept (encoded: ~10 KB a pair).
"""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from assets.flyt.scorer import FlytScorer
from resources.crawl import CrawlResource
from resources.embedding_files import embedded_count, load_embeddings
from resources.lake import LakeResource, samples_path


@dataclass(frozen=True)
class UpstreamPairs:
    """Pairs in (shard, key) order: keys, image bytes, captions, image and text embeddings."""
    keys: pa.Table  # key, shard
    images: list[bytes]
    captions: list[str]
    image_embeddings: np.ndarray  # (n, d) float32
    text_embeddings: np.ndarray

    def features(self) -> np.ndarray:
        """The FLYT scorer's input for each pair."""
        return np.concatenate([self.image_embeddings, self.text_embeddings], axis=1)


def shard_quota(counts: dict[str, int], max_pairs: int) -> dict[str, int]:
    """Pairs to draw from each shard: all of them up to `max_pairs` in all, else the same share
    of every shard (rounded, so the total is within a pair per shard of `max_pairs`)."""
    total = sum(counts.values())
    if total <= max_pairs:
        return dict(counts)
    return {shard: min(n, round(n * max_pairs / total)) for shard, n in counts.items()}


def read_upstream_pairs(lake: LakeResource, crawl: CrawlResource, model_id: str, shards: list[str],
                        max_pairs: int, seed: int = 0) -> UpstreamPairs:
    """Draw up to `max_pairs` embedded pairs evenly from `shards` (seeded)."""
    rng = np.random.default_rng(seed)
    quota = shard_quota({shard: embedded_count(lake, shard, model_id) for shard in shards}, max_pairs)
    keys, images, captions, image_parts, text_parts = [], [], [], [], []
    for shard in shards:
        table, image, text = load_embeddings(lake, shard, model_id)
        drawn = np.sort(rng.choice(table.num_rows, min(quota[shard], table.num_rows), replace=False))
        wanted = table.take(pa.array(drawn)).column("key").to_pylist()
        samples = lake.read_parquet(samples_path(shard), ["key", "caption", "tar_member", "image_status"])
        usable = {r["key"]: r for r in samples.to_pylist() if r["image_status"] == "ok"}
        members = {usable[key]["tar_member"]: key for key in wanted if key in usable}
        data = {members[name]: payload for name, payload in crawl.iter_tar(shard, wanted=set(members))}
        found = [i for i, key in zip(drawn, wanted) if key in data]  # a tar changed since: left out
        for i in found:
            key = table.column("key")[int(i)].as_py()
            keys.append((key, shard))
            images.append(data[key])
            captions.append(usable[key]["caption"] or "")
        image_parts.append(image[found])
        text_parts.append(text[found])
    dim = next((part.shape[1] for part in image_parts), 0)
    return UpstreamPairs(
        pa.table({"key": [k for k, _ in keys], "shard": [s for _, s in keys]}), images, captions,
        np.concatenate(image_parts) if image_parts else np.zeros((0, dim), np.float32),
        np.concatenate(text_parts) if text_parts else np.zeros((0, dim), np.float32))


def score_pairs(scorer: FlytScorer, image: np.ndarray, text: np.ndarray, batch: int = 65_536) -> np.ndarray:
    """The scorer's score of each pair (float32), a batch at a time."""
    import torch

    out = np.empty(len(image), np.float32)
    with torch.inference_mode():
        for start in range(0, len(image), batch):
            features = FlytScorer.features(torch.from_numpy(np.ascontiguousarray(image[start:start + batch])),
                                           torch.from_numpy(np.ascontiguousarray(text[start:start + batch])))
            out[start:start + batch] = scorer(features.float()).numpy()
    return out
