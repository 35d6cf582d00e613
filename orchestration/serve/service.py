"""What `clipsieve serve` answers, independent of HTTP (orchestration/serve/app.py maps the
routes onto these methods; tests call them directly too).

Two shapes of answer:

- clip-retrieval's back (`knn`, `metadata`, `indices_list`): the same request fields and
  result lists, so its ClipClient and front work unmodified. Where the back would answer a
  bad request with a 500, this raises ValueError (a 400 with the reason).
- clipsieve's own (`search`, `count`, `explain`, `save_policy`, `export`): filters on any
  score and on subset membership, paging, what each filter removed, a count above a
  similarity threshold, and why a result is in or out of each policy.
"""

import base64
import binascii
import io
import threading
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from assets.embeddings import encode_texts
from assets.indices import encode_query
from assets.subsets import calibrated_params, load_policies, uid_array
from orchestration.lineage import explain
from orchestration.serve import policy_file
from orchestration.serve.crawl_images import CrawlImages
from orchestration.serve.search import RANGE_COLUMNS, Filters, SearchPage, count_above, query_vector, search
from orchestration.serve.served_index import VIOLENCE_PROMPTS, ServedIndex, open_served_index
from resources.catalog import open_catalog
from resources.clip_model import LoadedClip
from resources.crawl import CrawlResource
from resources.embedding_files import committed_keys
from resources.lake import LakeResource
from resources.safe_paths import check_policy_name
from resources.zero_shot import PromptSet, ZeroShotHead, logit_scale

SCORE_FIELDS = ("similarity", "punsafe", "pwatermark", "aesthetic", "toxicity", "language", "pviolence")


@dataclass(frozen=True)
class ServiceSettings:
    fetch_image_urls: bool = False  # `image_url` queries make the server fetch a URL: off unless asked
    max_upload_bytes: int = 5 << 20  # an uploaded query image, decoded
    max_results: int = 10_000  # num_result_ids / limit at most
    max_searched: int = 400_000  # neighbours searched at most while filters thin the results
    max_saved_members: int = 100_000  # results a saved policy may list


class SearchService:
    """The lake's subset indices, opened once, and the CLIP model that encodes queries
    (`indices`: served indices made elsewhere, e.g. bench/serve.py's synthetic one, instead)."""

    def __init__(self, lake: LakeResource, clip: LoadedClip, model_id: str, policy_dir: Path, cache_dir: Path,
                 pretrained: str, crawl: CrawlResource | None = None,
                 settings: ServiceSettings = ServiceSettings(),
                 indices: dict[str, ServedIndex] | None = None) -> None:
        self.lake, self.clip, self.model_id, self.policy_dir = lake, clip, model_id, policy_dir
        self.pretrained, self.settings = pretrained, settings
        self.crawl = CrawlImages(crawl) if crawl is not None else None
        self.catalog = open_catalog(lake, model_id)
        self.lock = threading.Lock()  # one DuckDB connection and one policy folder: a request at a time
        self.indices: dict[str, ServedIndex] = dict(indices or {})
        self.unavailable: dict[str, str] = {}  # policy -> why it has no index to serve
        violence = ZeroShotHead.build(PromptSet.load(VIOLENCE_PROMPTS), lambda texts: encode_texts(clip, texts, 8),
                                      logit_scale(clip.model))
        for policy in load_policies(policy_dir) if indices is None else ():
            try:
                self.indices[policy.name] = open_served_index(lake, self.catalog, policy.name, model_id, cache_dir,
                                                              violence)
            except (ValueError, FileNotFoundError) as error:
                self.unavailable[policy.name] = str(error)

    def close(self) -> None:
        self.catalog.close()

    # --- clip-retrieval's back -------------------------------------------------------------

    def indices_list(self) -> list[str]:
        return list(self.indices)

    def knn(self, body: dict[str, Any]) -> tuple[list[dict], SearchPage]:
        """clip-retrieval's /knn-service: the first `num_images` results with url and caption
        (and `image`, base64, when the crawl is given), the rest up to `num_result_ids` with
        id and similarity only. Also returns the page (what the filters removed)."""
        for required in ("modality", "num_images", "indice_name"):
            if required not in body:
                raise ValueError(f"missing field {required!r}")
        if body["modality"] != "image":
            raise ValueError("only image indices are served (modality 'image'): clipsieve indexes the image "
                             "embeddings of each subset")
        if body.get("use_mclip"):
            raise ValueError("use_mclip: no multilingual text encoder is loaded")
        num_images = _count(body["num_images"], "num_images", self.settings.max_results)
        num_result_ids = _count(body.get("num_result_ids") or num_images, "num_result_ids", self.settings.max_results)
        index = self.index(body["indice_name"])
        filters = self._filters(body, index)
        query = self._query(body, index)
        page = search(index, query, filters, _count(body.get("offset", 0), "offset", self.settings.max_searched),
                      max(num_images, num_result_ids), self.settings.max_searched)
        rows = page.rows.tolist()
        described = self._described(index, rows[:num_images])
        results = [{**(described[rank] if rank < num_images else {}), "id": row, "similarity": similarity}
                   for rank, (row, similarity) in enumerate(zip(rows, page.similarities.tolist()))]
        return results, page

    def metadata(self, body: dict[str, Any]) -> list[dict]:
        """clip-retrieval's /metadata: {id, metadata} for each id, in the order asked."""
        ids = body.get("ids") or []
        if not ids:
            return []
        index = self.index(body.get("indice_name"))
        described = self._described(index, [self._row(index, i) for i in ids])
        return [{"id": i, "metadata": metadata} for i, metadata in zip(ids, described)]

    # --- clipsieve's own -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls."""
        return {"indices": [{"name": name, "count": index.count, "policies": index.policies}
                            for name, index in self.indices.items()],
                "unavailable": self.unavailable, "range_columns": list(RANGE_COLUMNS),
                "images": self.crawl is not None}

    def search(self, body: dict[str, Any]) -> dict[str, Any]:
        """A page of filtered results with their scores and policy memberships, and the
        figures: what each filter removed, how many neighbours were searched."""
        index = self.index(body.get("indice_name"))
        filters = self._filters(body, index)
        query = self._query(body, index)
        offset = _count(body.get("offset", 0), "offset", self.settings.max_searched)
        limit = _count(body.get("limit", 40), "limit", self.settings.max_results)
        page = search(index, query, filters, offset, limit, self.settings.max_searched)
        rows = index.rows(page.rows.tolist())
        results = []
        for row, position, similarity in zip(rows, page.rows.tolist(), page.similarities.tolist()):
            results.append({
                "id": position, "key": row["key"], "shard": row["shard"], "url": row["url"] or "",
                "caption": row["caption"] or "", "similarity": similarity,
                "scores": {name: row.get(name) for name in SCORE_FIELDS},
                "policies": {policy: bool(row[f"in_{policy}"]) for policy in index.policies},
                "is_duplicate": row["is_duplicate"], "duplicate_of": row["dedup_group"]})
        answer = {"indice_name": index.name, "offset": offset, "limit": limit, "results": results,
                  "removed": page.removed, "searched": page.searched, "matched": page.matched,
                  "exhausted": page.exhausted}
        if body.get("count_above") is not None:
            answer["count_above"] = self.count({**body, "threshold": body["count_above"]}, query, index)
        return answer

    def count(self, body: dict[str, Any], query: np.ndarray | None = None,
              index: ServedIndex | None = None) -> dict[str, Any]:
        """Index rows at or above `threshold` similarity to the query (before filters)."""
        index = index or self.index(body.get("indice_name"))
        query = query if query is not None else self._query(body, index)
        threshold = _number(body.get("threshold"), "threshold")
        count, exact = count_above(index, query, threshold, self.settings.max_searched)
        return {"threshold": threshold, "count": count, "exact": exact}

    def vector(self, body: dict[str, Any]) -> dict[str, Any]:
        """An index row's stored image embedding (to search with it elsewhere, e.g. ClipClient's
        embedding_input)."""
        index = self.index(body.get("indice_name"))
        return {"id": self._row(index, body.get("id")),
                "vector": self._image_embedding(index, self._row(index, body.get("id"))).astype(float).tolist()}

    def explain(self, key: str) -> dict[str, Any]:
        """Why the sample is in or out of each policy (orchestration/lineage.py), from the lake."""
        with self.lock:
            return explain(self.catalog, key, load_policies(self.policy_dir), calibrated_params(self.pretrained),
                           None, self.lake, self.model_id)

    def save_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        """Write the query's results and filters as a new policy file (orchestration/serve/policy_file.py)."""
        name = check_policy_name(str(body.get("name", "")))
        index, filters, page = self._subset_results(body)
        found = index.rows(page.rows.tolist(), ["key", "shard"])
        described = _describe_query(body, index)
        text = policy_file.policy_sql(name, described, filters, found, page.searched,
                                      datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
        with self.lock:
            if name in self.indices or name in self.unavailable:
                raise ValueError(f"a policy named {name!r} exists already")
            path = policy_file.write_new(self.policy_dir, name, text)
        return {"name": name, "file": path.name, "members": len(found),
                "note": f"materialize {name}_subset (and {name}_index) to make it a subset"}

    def export(self, body: dict[str, Any], kind: str) -> tuple[bytes, str]:
        """The query's filtered results as (file bytes, file name): `parquet` (url, caption,
        img2dataset's input) or `uids` (DataComp's subset array)."""
        index, _, page = self._subset_results(body)
        found = index.table.take(pa.array(page.rows, pa.int64()))
        out = io.BytesIO()
        if kind == "parquet":
            pq.write_table(found.select(["url", "caption"]), out)
            return out.getvalue(), f"{index.name}-results.parquet"
        if kind == "uids":
            with self.lock:
                results = found.select(["shard", "key", "uid"])  # each result once
                self.catalog.connection.register(
                    "candidate", results.append_column("draws", pa.array([1] * results.num_rows, pa.int64())))
                try:
                    np.save(out, uid_array(self.catalog))
                finally:
                    self.catalog.connection.unregister("candidate")
            return out.getvalue(), f"{index.name}-results-uids.npy"
        raise ValueError(f"unknown export {kind!r}: parquet or uids")

    def image(self, indice_name: str, row: int) -> bytes | None:
        """The image bytes of an index row from the crawl (None without a crawl or image)."""
        if self.crawl is None:
            return None
        index = self.index(indice_name)
        found = index.rows([self._row(index, row)], ["shard", "tar_member"])[0]
        if not found["tar_member"]:
            return None
        return self.crawl.read(found["shard"], found["tar_member"])

    # --- parts --------------------------------------------------------------------------------

    def _subset_results(self, body: dict[str, Any]) -> tuple[ServedIndex, Filters, SearchPage]:
        """The first `limit` results (default 1,000) a saved policy or a download holds."""
        index = self.index(body.get("indice_name"))
        filters = self._filters(body, index)
        query = self._query(body, index)
        limit = _count(body.get("limit", 1_000), "limit", self.settings.max_saved_members)
        return index, filters, search(index, query, filters, 0, limit, max(self.settings.max_searched, limit))

    def index(self, name: str | None) -> ServedIndex:
        if name is None:
            if not self.indices:
                raise ValueError(f"no subset has an index to serve: {self.unavailable}")
            return next(iter(self.indices.values()))
        if name not in self.indices:
            why = self.unavailable.get(name, f"served: {list(self.indices)}")
            raise ValueError(f"no index {name!r} ({why})")
        return self.indices[name]

    def _row(self, index: ServedIndex, value: Any) -> int:
        return _count(value, "id", index.count - 1)

    def _described(self, index: ServedIndex, rows: list[int]) -> list[dict[str, Any]]:
        """url and caption of each row (clip-retrieval's metadata), and its image (base64)
        where the crawl is given."""
        found = index.rows(rows, ["url", "caption"])
        described = [{"url": f["url"] or "", "caption": f["caption"] or ""} for f in found]
        if self.crawl is not None:
            for result, row in zip(described, rows):
                data = self.image(index.name, row)
                if data is not None:
                    result["image"] = base64.b64encode(data).decode()
        return described

    def _query(self, body: dict[str, Any], index: ServedIndex) -> np.ndarray:
        """The query vector from the first of text, image, image_url, embedding_input given
        (clip-retrieval's order), moved by the aesthetic fields."""
        if body.get("text"):
            vector = encode_query(self.clip, text=str(body["text"]))
        elif body.get("image"):
            vector = encode_query(self.clip, image=self._image_bytes(str(body["image"])))
        elif body.get("image_url"):
            vector = encode_query(self.clip, image=self._fetch(str(body["image_url"])))
        elif body.get("embedding_input"):
            vector = np.asarray(body["embedding_input"], np.float32)
        elif body.get("like") is not None:  # another result's image, by its index row
            vector = self._image_embedding(index, self._row(index, body["like"]))
        else:
            raise ValueError("give text, image (base64), embedding_input or like (an index row) to search with")
        score = body.get("aesthetic_score")
        weight = body.get("aesthetic_weight")
        return query_vector(vector, index, None if score in (None, "") else int(score),
                            None if weight in (None, "") else float(weight))

    def _fetch(self, url: str) -> bytes:
        """An image_url query's bytes: only when the server was started to allow it (it would
        fetch whatever URL anyone sends), http(s) only, size-limited."""
        if not self.settings.fetch_image_urls:
            raise ValueError("image_url queries are off: the server would fetch any URL it is given "
                             "(start it with --fetch-image-urls to allow them)")
        if not url.startswith(("http://", "https://")):
            raise ValueError("image_url must be an http(s) URL")
        request = urllib.request.Request(url, headers={"User-Agent": "clipsieve-serve"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (scheme checked above)
            data = response.read(self.settings.max_upload_bytes + 1)
        if len(data) > self.settings.max_upload_bytes:
            raise ValueError(f"the image at image_url is over {self.settings.max_upload_bytes} bytes")
        return data

    def _image_embedding(self, index: ServedIndex, row: int) -> np.ndarray:
        """The stored image embedding of an index row, read from its shard's embeddings."""
        found = index.rows([row], ["shard", "embedding_row"])[0]
        _, _, files = committed_keys(self.lake, found["shard"], self.model_id)
        return self.lake.read_npy_rows(f"{files}/img_emb.npy", found["embedding_row"], found["embedding_row"] + 1)[0]

    def _image_bytes(self, encoded: str) -> bytes:
        if len(encoded) > self.settings.max_upload_bytes * 4 // 3 + 4:
            raise ValueError(f"the image is over {self.settings.max_upload_bytes} bytes")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError("image: not base64") from None

    def _filters(self, body: dict[str, Any], index: ServedIndex) -> Filters:
        """clip-retrieval's switches (safe mode and dedup on unless sent false) and clipsieve's
        `filters`: {"ranges": {column: [min, max]}, "language", "in_policies", "out_policies"}."""
        extra = body.get("filters") or {}
        if not isinstance(extra, dict):
            raise ValueError("filters must be an object")
        ranges = {}
        for column, bounds in (extra.get("ranges") or {}).items():
            if column not in RANGE_COLUMNS or not isinstance(bounds, list | tuple) or len(bounds) != 2:
                raise ValueError(f"ranges: {column!r} must be one of {list(RANGE_COLUMNS)} with [min, max]")
            ranges[column] = tuple(None if b in (None, "") else _number(b, column) for b in bounds)
        filters = Filters(safe=_flag(body.get("use_safety_model"), True),
                          violence=_flag(body.get("use_violence_detector"), False),
                          deduplicate=_flag(body.get("deduplicate"), True), ranges=ranges,
                          language=extra.get("language") or None,
                          in_policies=tuple(extra.get("in_policies") or ()),
                          out_policies=tuple(extra.get("out_policies") or ()))
        filters.check(index)
        return filters


def _describe_query(body: dict[str, Any], index: ServedIndex) -> str:
    if body.get("text"):
        return f"text {str(body['text'])!r}"
    if body.get("like") is not None:
        return f"the image of row {body['like']} of {index.name}"
    return "an uploaded image" if body.get("image") else "an embedding"


def _flag(value: Any, default: bool) -> bool:
    return default if value is None else bool(value)


def _count(value: Any, name: str, most: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer") from None
    if not 0 <= number <= most:
        raise ValueError(f"{name} must be within 0..{most}")
    return number


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite")
    return number

