"""quality: caption length and image geometry, the inputs of DataComp's basic filter.

Columns: caption_words, caption_chars, width, height (the original image size when the
crawl records it, as DataComp filters on it), min_side, aspect_ratio (long side / short side).
"""

import pyarrow as pa
import pyarrow.compute as pc

from assets.scores.common import usable_samples, write_scores
from resources.lake import LakeResource

CODE_VERSION = "2"


def _size_column(samples: pa.Table, name: str) -> pa.Array:
    original = f"original_{name}"
    if original in samples.column_names:
        return pc.coalesce(samples.column(original), samples.column(name)).cast(pa.int64())
    return samples.column(name).cast(pa.int64())


def quality_scores(samples: pa.Table) -> pa.Table:
    """Caption and geometry measures of each sample, vectorized over the table."""
    captions = pc.utf8_trim_whitespace(pc.fill_null(samples.column("caption"), ""))
    # splitting "" gives [""]: an empty or whitespace-only caption has no words
    words = pc.if_else(pc.equal(captions, ""), 0, pc.list_value_length(pc.utf8_split_whitespace(captions)))
    width, height = _size_column(samples, "width"), _size_column(samples, "height")
    min_side = pc.min_element_wise(width, height)
    max_side = pc.max_element_wise(width, height)
    aspect = pc.divide(max_side.cast(pa.float64()), pc.max_element_wise(min_side, 1).cast(pa.float64()))
    return pa.table({
        "key": samples.column("key"),
        "shard": samples.column("shard"),
        "caption_words": words.cast(pa.int32()),
        "caption_chars": pc.utf8_length(captions).cast(pa.int32()),
        "width": width,
        "height": height,
        "min_side": min_side,
        "aspect_ratio": aspect.cast(pa.float32()),
    })


def score_shard(lake: LakeResource, shard: str) -> tuple[pa.Table, dict]:
    """Write the shard's scores/quality; the table and its figures."""
    table = quality_scores(usable_samples(lake, shard))
    return table, write_scores(lake, shard, "quality", table)
