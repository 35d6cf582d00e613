"""nsfw, watermark and aesthetic: LAION-style scores over CLIP image embeddings.

nsfw writes `punsafe` and watermark `pwatermark`, probabilities in [0, 1] (LAION's
recommended cut-offs: punsafe 0.5, pwatermark 0.8); aesthetic writes `aesthetic`, a 1-10
rating like the LAION aesthetic predictor's (LAION-Aesthetics kept > 7). Each comes from a
head file that fits the model or from zero-shot prompts (resources/heads.py chooses); the
choice is in the asset's code version, its metadata and the score file's own metadata
(`clipsieve explain` shows it).
"""

from typing import Protocol

import numpy as np
import pyarrow as pa

from assets.embeddings import encode_texts
from assets.scores.common import write_scores
from resources.clip_model import ClipModelResource
from resources.embedding_files import load_embeddings
from resources.heads import HEADS, Head, HeadChoice
from resources.lake import LakeResource
from resources.zero_shot import PromptSet, ZeroShotHead, logit_scale

CODE_VERSION = "2"


class Scorer(Protocol):
    input_dim: int

    def predict(self, embeddings: np.ndarray) -> np.ndarray: ...


def head_scores(head: Scorer, column: str, keys: pa.Table, image: np.ndarray) -> pa.Table:
    if len(image) and image.shape[1] != head.input_dim:
        raise ValueError(f"head expects {head.input_dim}-d embeddings, the model gives {image.shape[1]}-d: "
                         "use heads trained for this model, or HeadsResource kind 'auto' / 'zero_shot'")
    return pa.table({
        "key": keys.column("key"),
        "shard": keys.column("shard"),
        column: pa.array(head.predict(image) if len(image) else [], pa.float32()),
    })


def load_scorer(choice: HeadChoice, clip: ClipModelResource) -> Scorer:
    """The head a choice names: the file, or the zero-shot head built from the model's text tower."""
    if choice.kind == "file":
        return Head.load(choice.source)
    loaded = clip.load()
    return ZeroShotHead.build(PromptSet.load(choice.source),
                              lambda prompts: encode_texts(loaded, prompts, clip.batch_size),
                              logit_scale(loaded.model))


def score_shard(lake: LakeResource, shard: str, name: str, model_id: str, choice: HeadChoice,
                scorer: Scorer) -> tuple[pa.Table, dict]:
    """Write the shard's scores/<name> (nsfw, watermark or aesthetic) with the chosen head;
    the table and its figures."""
    column, cut_off = HEADS[name]
    keys, image, _ = load_embeddings(lake, shard, model_id)
    table = head_scores(scorer, column, keys, image)
    metadata = write_scores(lake, shard, name, table, model_id, choice.metadata())
    values = table.column(column).to_numpy()
    metadata[f"share/{column}>{cut_off}"] = float((values > cut_off).mean()) if len(values) else 0.0
    return table, {**metadata, **choice.metadata()}
