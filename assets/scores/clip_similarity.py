"""clip_similarity: cosine of each sample's image and caption embeddings (LAION's `similarity`).

Embeddings are stored normalized, so the cosine is a row-wise dot product.
"""

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, MaterializeResult

from assets.embeddings import load_embeddings
from assets.scores.common import for_each_shard, score_asset, write_scores
from resources.lake import LakeResource

CODE_VERSION = "1"


def cosine_similarity(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, dim) arrays; renormalizes to undo fp16 rounding."""
    image = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", image, text).astype(np.float32)


def similarity_scores(keys: pa.Table, image: np.ndarray, text: np.ndarray) -> pa.Table:
    return pa.table({
        "key": keys.column("key"),
        "shard": keys.column("shard"),
        "similarity": pa.array(cosine_similarity(image, text), pa.float32()),
    })


def build_clip_similarity_asset(model_id: str, batches: BackfillPolicy) -> AssetsDefinition:
    @score_asset(f"{CODE_VERSION}+{model_id}", "numpy", batches, deps=("embeddings",), name="clip_similarity")
    def clip_similarity(context: AssetExecutionContext, lake: LakeResource) -> MaterializeResult:
        """CLIP image-caption cosine similarity per embedded sample (LAION's `similarity`)."""
        return for_each_shard(context, lambda shard: write_scores(
            lake, shard, "clip_similarity", similarity_scores(*load_embeddings(lake, shard, model_id)), model_id))

    return clip_similarity
