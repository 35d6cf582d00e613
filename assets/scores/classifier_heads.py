"""nsfw, watermark and aesthetic: LAION-style heads over CLIP image embeddings.

nsfw writes `punsafe` and watermark `pwatermark`, probabilities in [0, 1] (LAION's
recommended cut-offs: punsafe 0.5, pwatermark 0.8); aesthetic writes `aesthetic`, a 1-10
rating like the LAION aesthetic predictor's (LAION-Aesthetics kept > 7). The heads are
files (resources/heads.py) and must match the model's embedding dimension.
"""

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult

from assets.embeddings import load_embeddings
from assets.scores.common import for_each_shard, score_asset, write_scores
from resources.heads import Head, HeadsResource
from resources.lake import LakeResource

CODE_VERSION = "1"
# head -> (output column, the cut-off reported in metadata)
HEADS = {"nsfw": ("punsafe", 0.5), "watermark": ("pwatermark", 0.8), "aesthetic": ("aesthetic", 7.0)}


def head_scores(head: Head, column: str, keys: pa.Table, image) -> pa.Table:
    if len(image) and image.shape[1] != head.input_dim:
        raise ValueError(f"head expects {head.input_dim}-d embeddings, the model gives {image.shape[1]}-d: "
                         "use heads trained for this model")
    return pa.table({
        "key": keys.column("key"),
        "shard": keys.column("shard"),
        column: pa.array(head.predict(image) if len(image) else [], pa.float32()),
    })


def build_head_asset(name: str, model_id: str, head_version: str) -> AssetsDefinition:
    column, cut_off = HEADS[name]

    @score_asset(f"{CODE_VERSION}+{model_id}+{head_version}", "torch", deps=("embeddings",), name=name,
                 description=f"`{column}` from the {name} head over CLIP image embeddings.")
    def head_asset(context: AssetExecutionContext, lake: LakeResource, heads: HeadsResource) -> MaterializeResult:
        head = heads.load(name)

        def one(shard: str) -> dict:
            keys, image, _ = load_embeddings(lake, shard, model_id)
            table = head_scores(head, column, keys, image)
            metadata = write_scores(lake, shard, name, table, model_id)
            values = table.column(column).to_numpy()
            metadata[f"share/{column}>{cut_off}"] = float((values > cut_off).mean()) if len(values) else 0.0
            return metadata

        return for_each_shard(context, one)

    return head_asset


def build_head_assets(model_id: str, heads: HeadsResource) -> list[AssetsDefinition]:
    return [build_head_asset(name, model_id, heads.version(name)) for name in HEADS]
