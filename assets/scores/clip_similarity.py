"""clip_similarity: cosine of each sample's image and caption embeddings (LAION's `similarity`).

Embeddings are stored normalized, so the cosine is a row-wise dot product.
"""

import numpy as np
import pyarrow as pa

from assets.scores.common import write_scores
from resources.embedding_files import load_embeddings
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


def score_shard(lake: LakeResource, shard: str, model_id: str) -> tuple[pa.Table, dict]:
    """Write the shard's scores/clip_similarity for the model; the table and its figures."""
    table = similarity_scores(*load_embeddings(lake, shard, model_id))
    return table, write_scores(lake, shard, "clip_similarity", table, model_id)
