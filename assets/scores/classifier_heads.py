"""nsfw and watermark: LAION-style classifier heads over CLIP image embeddings.

nsfw writes `punsafe`, watermark writes `pwatermark`, each a probability in [0, 1]
(LAION's recommended cut-offs: punsafe 0.5, pwatermark 0.8). The heads are files
(resources/heads.py) and must match the model's embedding dimension.
"""

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, asset

from assets.embeddings import load_embeddings
from assets.scores.common import write_scores
from orchestration.partitions import shard_partitions
from resources.heads import Head, HeadsResource
from resources.lake import LakeResource

CODE_VERSION = "1"
HEAD_COLUMNS = {"nsfw": "punsafe", "watermark": "pwatermark"}


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
    column = HEAD_COLUMNS[name]

    @asset(
        name=name,
        key_prefix="scores",
        partitions_def=shard_partitions,
        deps=["embeddings"],
        group_name="scores",
        code_version=f"{CODE_VERSION}+{model_id}+{head_version}",
        compute_kind="torch",
        description=f"`{column}` from the {name} head over CLIP image embeddings.",
    )
    def head_asset(context: AssetExecutionContext, lake: LakeResource, heads: HeadsResource) -> MaterializeResult:
        shard = context.partition_key
        keys, image, _ = load_embeddings(lake, shard, model_id)
        table = head_scores(heads.load(name), column, keys, image)
        metadata = write_scores(lake, shard, name, table, model_id)
        threshold = 0.5 if name == "nsfw" else 0.8
        values = table.column(column).to_numpy()
        metadata[f"share/{column}>{threshold}"] = float((values > threshold).mean()) if len(values) else 0.0
        return MaterializeResult(metadata=metadata)

    return head_asset


def build_head_assets(model_id: str, heads: HeadsResource) -> list[AssetsDefinition]:
    return [build_head_asset(name, model_id, heads.version(name)) for name in HEAD_COLUMNS]
