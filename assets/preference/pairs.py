"""preference_pairs: a shard's (chosen, rejected) caption pairs, CLIP-DPO's rules applied to
CLIP's ranking of each image's candidates (assets/preference/candidates.py).

The rules, in the order they are applied (sql/preference/ranked.sql, pairs.sql; values from
PreferenceResource.rules):
    over_token_limit            a candidate longer than the model's context is never ranked
    text_in_image               ptext > max_ptext: CLIP over-scores captions that repeat the
                                text written in an image, so its ranking there is not trusted
    fewer_than_two_candidates   nothing to prefer
    best_below_min_similarity   the best caption's similarity is under min_similarity
    best_not_ahead              the best leads the runner-up by less than min_lead: too close
                                to call which caption is right
    within_margin_of_best       a pair's chosen caption beats its rejected one by min_margin
                                or more; closer candidates make no pair
    over_max_pairs              at most max_pairs pairs per image
Every candidate left out is in dropped.parquet with its reason; pairs.parquet keeps both
similarities and the margin, for lineage.
"""

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from assets.preference.candidates import CONTEXT_LENGTH_KEY
from resources.catalog import read_sql
from resources.lake import LakeResource, preference_dir, score_path

CODE_VERSION = "1"


@dataclass
class ShardPairs:
    pairs: pa.Table
    dropped: pa.Table


def rank_and_pair(candidates: pa.Table, images: pa.Table, rules: dict[str, object],
                  context_length: int) -> ShardPairs:
    """The pairs and the dropped rows for one shard's `candidates` (CANDIDATE_SCHEMA) and
    `images` (key, ptext) under `rules` (min_similarity, min_margin, min_lead, max_ptext,
    pairing, max_pairs)."""
    connection = duckdb.connect()
    try:
        connection.register("candidates", candidates)
        connection.register("images", images)
        for name, value in {**rules, "context_length": context_length}.items():
            connection.execute(f"SET VARIABLE {name} = ?", [value])
        connection.execute(read_sql("preference/ranked.sql"))
        pairs = connection.execute(read_sql("preference/pairs.sql")).fetch_arrow_table()
        connection.register("pairs", pairs)
        dropped = connection.execute(read_sql("preference/dropped.sql")).fetch_arrow_table()
    finally:
        connection.close()
    return ShardPairs(pairs, dropped)


def write_pairs(lake: LakeResource, shard: str, model_id: str, rules: dict[str, object]) -> ShardPairs:
    """Pair the shard's candidates.parquet with its ptext scores; write pairs.parquet and
    dropped.parquet beside them."""
    folder = preference_dir(shard, model_id)
    candidates = lake.read_parquet(f"{folder}/candidates.parquet")
    context_length = int(lake.parquet_metadata(f"{folder}/candidates.parquet").get(CONTEXT_LENGTH_KEY, 0))
    images = lake.read_parquet(score_path(shard, "text_in_image", model_id), columns=["key", "ptext"])
    result = rank_and_pair(candidates, images, rules, context_length)
    lake.write_parquet(f"{folder}/dropped.parquet", result.dropped)
    lake.write_parquet(f"{folder}/pairs.parquet", result.pairs)
    return result
