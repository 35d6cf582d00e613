"""Search one served index: nearest neighbours of a query vector, filtered, a page at a time,
with the number of results each filter removed.

clip-retrieval's back searches k neighbours and filters them afterwards without saying so:
a strict filter silently empties the page (its issues #60 and #283). Here the search widens
(k times four each round, up to `max_searched`) until the page is full or the index is
exhausted, and the answer says how many candidates each filter removed, how many were
searched and whether every row was.
"""

from dataclasses import dataclass, field

import faiss
import numpy as np

from orchestration.serve.served_index import AESTHETIC_LEVELS, ServedIndex
from resources.embedding_files import normalized

SAFE_MAX_PUNSAFE = 0.5  # LAION's NSFW cut: safe mode drops punsafe above it (and unscored images)
VIOLENCE_MAX = 0.5  # the violence detector drops pviolence above it
# Score columns a range filter may name (sql/serve/index_rows.sql, plus pviolence).
RANGE_COLUMNS = ("similarity", "punsafe", "pwatermark", "aesthetic", "toxicity", "language_score", "caption_words",
                 "min_side", "aspect_ratio", "pviolence")
FIRST_SEARCH = 64  # neighbours searched at least


@dataclass
class Filters:
    """What a result must pass. Safe mode and deduplication are on unless turned off."""
    safe: bool = True
    violence: bool = False
    deduplicate: bool = True
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # column -> (min, max)
    language: str | None = None
    in_policies: tuple[str, ...] = ()  # members of every one of these subsets
    out_policies: tuple[str, ...] = ()  # members of none of these

    def check(self, index: ServedIndex) -> None:
        """A clear error for a filter the index cannot apply."""
        unknown = sorted(set(self.ranges) - set(RANGE_COLUMNS))
        if unknown:
            raise ValueError(f"unknown score column(s) {unknown}: filter on {list(RANGE_COLUMNS)}")
        missing = sorted((set(self.in_policies) | set(self.out_policies)) - set(index.policies))
        if missing:
            raise ValueError(f"no materialized subset {missing}: filter on {sorted(index.policies)}")


@dataclass
class SearchPage:
    rows: np.ndarray  # index rows of the page's results, best first
    similarities: np.ndarray  # their inner products with the query
    removed: dict[str, int]  # filter -> candidates it removed (each counted by the first filter it fails)
    searched: int  # neighbours searched
    matched: int  # of those, how many passed every filter
    exhausted: bool  # every row of the index was searched


def query_vector(vector: np.ndarray, index: ServedIndex, aesthetic_score: int | None = None,
                 aesthetic_weight: float | None = None) -> np.ndarray:
    """A normalized (dim,) query; moved towards the members rated `aesthetic_score` (0..9) by
    `aesthetic_weight`, as clip-retrieval's back does with its aesthetic embeddings."""
    query = normalized(np.asarray(vector, np.float32).reshape(1, -1))[0]
    if query.shape[0] != index.index.d:
        raise ValueError(f"the query has {query.shape[0]} dimensions, the index {index.index.d}")
    if aesthetic_score is not None and aesthetic_weight:
        if not 0 <= aesthetic_score < AESTHETIC_LEVELS:
            raise ValueError(f"aesthetic_score must be 0..{AESTHETIC_LEVELS - 1}, not {aesthetic_score}")
        target = index.aesthetic[aesthetic_score]
        if target.any():  # no member rated so: the query stays as it is
            query = normalized((query + aesthetic_weight * target).reshape(1, -1))[0]
    return query


def passing(index: ServedIndex, rows: np.ndarray, filters: Filters) -> tuple[np.ndarray, dict[str, int]]:
    """(bool per row: passes every filter, candidates each filter removed); `rows` best first."""
    keep = np.ones(len(rows), bool)
    removed: dict[str, int] = {}

    def drop(name: str, fails: np.ndarray) -> None:
        newly = keep & fails
        removed[name] = int(newly.sum())
        keep[newly] = False

    if filters.safe:
        punsafe = index.values("punsafe", rows)
        drop("safe", ~(punsafe <= SAFE_MAX_PUNSAFE))  # NaN (unscored) fails too
    if filters.violence:
        drop("violence", ~(index.values("pviolence", rows) <= VIOLENCE_MAX))
    for column, (low, high) in sorted(filters.ranges.items()):
        values = index.values(column, rows)
        inside = np.ones(len(rows), bool)
        if low is not None:
            inside &= values >= low
        if high is not None:
            inside &= values <= high
        drop(column, ~inside)
    if filters.language:
        drop("language", index.values("language", rows) != filters.language)
    for policy in filters.in_policies:
        drop(f"in:{policy}", ~index.values(f"in_{policy}", rows))
    for policy in filters.out_policies:
        drop(f"out:{policy}", index.values(f"in_{policy}", rows))
    if filters.deduplicate:
        # One result per duplicate group (near_duplicates' groups): the best-ranked that passed.
        groups = index.values("dedup_group_id", rows)
        first = np.zeros(len(rows), bool)
        survivors = np.flatnonzero(keep)
        _, at = np.unique(groups[survivors], return_index=True)
        first[survivors[at]] = True
        drop("deduplicate", ~first)
    return keep, removed


def search(index: ServedIndex, query: np.ndarray, filters: Filters, offset: int, limit: int,
           max_searched: int) -> SearchPage:
    """Results offset..offset+limit of the query's neighbours that pass the filters."""
    filters.check(index)
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    wanted, ceiling = offset + limit, min(index.count, max_searched)
    k = min(ceiling, max(FIRST_SEARCH, 4 * wanted))
    while True:
        scores, ids = nearest(index.index, query, max(k, 1))
        found = ids[0] >= 0
        rows, similarities = ids[0][found], scores[0][found]
        keep, removed = passing(index, rows, filters)
        if keep.sum() >= wanted or k >= ceiling:
            break
        k = min(ceiling, k * 4)
    kept = np.flatnonzero(keep)[offset:wanted]
    return SearchPage(rows[kept], similarities[kept], removed, int(len(rows)), int(keep.sum()),
                      k >= index.count)


def nearest(index: faiss.Index, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k nearest. An IVF probes enough lists to hold about twice k
    vectors (its tuned nprobe finds the top 10; a page of 10,000 needs more lists), through
    per-search parameters: the shared index is not changed."""
    vector = query.reshape(1, -1).astype(np.float32)
    ivf = index if isinstance(index, faiss.IndexIVF) else faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVF):  # flat, HNSW (its search widens to k itself), wrapped
        return index.search(vector, k)
    per_list = max(1.0, ivf.ntotal / ivf.nlist)
    nprobe = min(ivf.nlist, max(ivf.nprobe, int(np.ceil(2 * k / per_list))))
    if nprobe == ivf.nprobe:
        return index.search(vector, k)
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):  # the coarse graph must return nprobe lists
        params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(nprobe, quantizer.hnsw.efSearch))
    return index.search(vector, k, params=params)


def count_above(index: ServedIndex, query: np.ndarray, threshold: float, max_searched: int) -> tuple[int, bool]:
    """(index rows whose similarity to the query is at least `threshold`, whether the count is
    exact): faiss's range search where the index type has one, else neighbours searched
    widening until one falls below the threshold (`max_searched` at most: then a lower bound)."""
    vector = query.reshape(1, -1).astype(np.float32)
    try:
        limits, scores, _ = index.index.range_search(vector, float(threshold))
        return int((scores >= threshold).sum()), True
    except RuntimeError:  # e.g. HNSW: no range search
        pass
    ceiling = min(index.count, max_searched)
    k = min(ceiling, FIRST_SEARCH)
    while True:
        scores, ids = nearest(index.index, query, max(k, 1))
        valid = scores[0][ids[0] >= 0]
        above = int((valid >= threshold).sum())
        if above < len(valid) or k >= ceiling:
            return above, above < len(valid) or k >= index.count
        k = min(ceiling, k * 4)
