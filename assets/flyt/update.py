"""What the FLYT assets run: keep the committed FLYT scorer (or M-FLYT mix) while it still fits
the pool, else train one and commit it; and what scores/flyt and scores/mflyt run for a shard.

A scorer is trained again when there is none, when its settings or downstream data changed,
or when the pool has grown by more than `retrain_growth` since it was trained; otherwise it
is kept with its version, so the shards' scores stay fresh and only a new shard is scored.
Files: flyt/<model>/versions/<v>/scorer.safetensors, committed by flyt/<model>/scorer.json
written last; the mix is one file, flyt/<model>/mix.json (its weights are its content).
"""

import copy
import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.flyt.downstream import TRAINING_SEED, DownstreamSet, generate_scenes, read_downstream
from assets.flyt.mix import ScoreMix, read_mix, shard_columns
from assets.flyt.scorer import FlytScorer, load_scorer
from assets.flyt.sources import LabelledImages, PixelPairs
from assets.flyt.training import TrainingHistory, TrainingSettings, train_scorer
from assets.flyt.upstream import UpstreamPairs, read_upstream_pairs, score_pairs
from assets.scores.common import write_scores
from resources.clip_model import ClipModelResource
from resources.crawl import CrawlResource
from resources.embedding_files import committed_keys, embedded_count, load_embeddings
from resources.flyt import FlytSettings
from resources.lake import LakeResource, flyt_dir, prune_versions
from resources.versions import text_digest

CODE_VERSION = "1"


def downstream_set(settings: FlytSettings) -> DownstreamSet:
    """The configured downstream set, or labelled scenes of the sample crawl's world."""
    if settings.downstream:
        return read_downstream(settings.downstream)
    return generate_scenes(settings.downstream_samples, TRAINING_SEED)


def _downstream_digest(data: DownstreamSet) -> str:
    digest = hashlib.sha256()
    for image in data.images:
        digest.update(hashlib.sha256(image).digest())
    digest.update(data.labels.tobytes())
    digest.update(repr((data.classes, data.templates)).encode())
    return digest.hexdigest()[:16]


def _record(lake: LakeResource, path: str) -> dict | None:
    return lake.read_json(path) if lake.exists(path) else None


def committed_scorer(lake: LakeResource, model_id: str) -> dict | None:
    """The committed scorer's record (version, settings digest, pool it was trained on, ...), or None."""
    return _record(lake, f"{flyt_dir(model_id)}/scorer.json")


def committed_mix(lake: LakeResource, model_id: str) -> dict | None:
    """The committed M-FLYT mix (its record with `mix`: ScoreMix.to_json), or None."""
    return _record(lake, f"{flyt_dir(model_id)}/mix.json")


def read_scorer(lake: LakeResource, model_id: str) -> FlytScorer:
    """The committed scorer; a clear error when there is none."""
    record = committed_scorer(lake, model_id)
    if record is None:
        raise ValueError("no FLYT scorer yet: materialize flyt_scorer first")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "scorer.safetensors"
        lake.download(f"{flyt_dir(model_id)}/versions/{record['version']}/scorer.safetensors", str(local))
        return load_scorer(local, model_id)


def _why_train(committed: dict | None, wanted: str, pool: int, growth: float) -> str | None:
    """Why a scorer or mix must be trained again, or None to keep it."""
    if committed is None:
        return "none yet"
    if committed["settings"] != wanted:
        return "its settings, downstream data or inputs changed"
    if pool > committed["pool"] * (1 + growth):
        return f"the pool grew from {committed['pool']} to {pool} pairs"
    return None


def _train(scorer, pairs: UpstreamPairs, features: np.ndarray, downstream: DownstreamSet,
           settings: FlytSettings, log: Callable[[str], None]) -> TrainingHistory:
    """FLYT's loop for `scorer` over `pairs` (the scorer reads `features`) against a fresh
    reference model."""
    reference = ClipModelResource(model_name=settings.reference_model, pretrained=settings.reference_checkpoint,
                                  precision="fp32").load()
    # A copy: the loaded model is the process's cached one, which the embedding steps share.
    model = copy.deepcopy(reference.model).float().train()
    upstream = PixelPairs(pairs.images, pairs.captions, features, reference.preprocess, reference.tokenizer)
    labelled = LabelledImages(downstream, reference.preprocess, reference.tokenizer)
    return train_scorer(scorer, model, upstream, labelled, TrainingSettings(
        steps=settings.steps, upstream_batch=settings.upstream_batch, downstream_batch=settings.downstream_batch,
        scorer_lr=settings.scorer_lr, inner=settings.inner, reference_lr=settings.reference_lr, seed=settings.seed),
        log)


def _loss_figures(history: TrainingHistory) -> dict:
    losses = history.losses
    tail = max(1, len(losses) // 10)
    return {"seconds": round(history.seconds, 1), "first_losses": sum(losses[:tail]) / tail,
            "last_losses": sum(losses[-tail:]) / tail}


def update_scorer(lake: LakeResource, crawl: CrawlResource, model_id: str, shards: list[str],
                  settings: FlytSettings, log: Callable[[str], None] = print) -> dict:
    """Keep or train the scorer for the pool of `shards`; its record with `retrained` and `reason`."""
    if not shards:
        raise ValueError("the scored pool is empty: nothing to train a FLYT scorer on")
    import torch

    downstream = downstream_set(settings)
    wanted = text_digest(f"{CODE_VERSION}:{settings.digest()}:{_downstream_digest(downstream)}")
    pool = sum(embedded_count(lake, shard, model_id) for shard in shards)
    committed = committed_scorer(lake, model_id)
    reason = _why_train(committed, wanted, pool, settings.retrain_growth)
    if reason is None:
        return {**committed, "retrained": False, "reason": "it still fits the pool", "pool_now": pool}
    log(f"flyt_scorer: training ({reason})")
    pairs = read_upstream_pairs(lake, crawl, model_id, shards, settings.max_pairs, settings.seed)
    torch.manual_seed(settings.seed)
    scorer = FlytScorer(pairs.image_embeddings.shape[1], settings.hidden)
    history = _train(scorer, pairs, pairs.features(), downstream, settings, log)
    version = text_digest(f"{wanted}:{pool}:{len(pairs.images)}")
    folder = flyt_dir(model_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "scorer.safetensors"
        scorer.save(local, model_id)
        lake.write_file(f"{folder}/versions/{version}/scorer.safetensors", str(local))
    record = {"version": version, "settings": wanted, "pool": pool, "pairs": len(pairs.images),
              "downstream_images": len(downstream), "downstream_classes": len(downstream.classes),
              "steps": settings.steps, "reference_model": settings.reference_model, **_loss_figures(history)}
    lake.write_json(f"{folder}/scorer.json", record)
    prune_versions(lake, f"{folder}/versions", {version, committed["version"] if committed else ""})
    return {**record, "retrained": True, "reason": reason, "pool_now": pool}


def _pair_columns(lake: LakeResource, model_id: str, pairs: UpstreamPairs, columns: list[str]) -> np.ndarray:
    """The mix's columns for `pairs`, a shard's files at a time."""
    out = np.empty((pairs.keys.num_rows, len(columns)))
    shards = pairs.keys.column("shard")
    for shard in pc.unique(shards).to_pylist():
        rows = np.flatnonzero(pc.equal(shards, shard).to_numpy(zero_copy_only=False))
        out[rows] = shard_columns(lake, shard, model_id, columns, pairs.keys.take(pa.array(rows)))
    return out


def update_mix(lake: LakeResource, crawl: CrawlResource, model_id: str, shards: list[str],
               settings: FlytSettings, log: Callable[[str], None] = print) -> dict:
    """Keep, read (`mix_weights`) or train the M-FLYT mix for the pool of `shards`; its record."""
    if not shards:
        raise ValueError("the scored pool is empty: nothing to fit an M-FLYT mix on")
    columns = settings.mix_column_list
    scorer = committed_scorer(lake, model_id) if "flyt" in columns else None
    if "flyt" in columns and scorer is None:
        raise ValueError("the mix reads the flyt column: materialize flyt_scorer and scores/flyt first")
    given = Path(settings.mix_weights).read_text() if settings.mix_weights else ""
    downstream = downstream_set(settings) if not given else None
    inputs = f"{settings.digest(mix=True)}:{scorer['version'] if scorer else ''}:" + (
        text_digest(given) if given else _downstream_digest(downstream))
    wanted = text_digest(f"{CODE_VERSION}:{inputs}")
    pool = sum(embedded_count(lake, shard, model_id) for shard in shards)
    committed = committed_mix(lake, model_id)
    reason = _why_train(committed, wanted, pool, settings.retrain_growth if not given else float("inf"))
    if reason is None:
        return {**committed, "retrained": False, "reason": "it still fits the pool", "pool_now": pool}
    figures: dict = {}
    if given:
        mix = read_mix(settings.mix_weights)
        log(f"flyt_mix: weights from {settings.mix_weights}")
    else:
        import torch

        log(f"flyt_mix: training ({reason})")
        pairs = read_upstream_pairs(lake, crawl, model_id, shards, settings.max_pairs, settings.seed)
        features = _pair_columns(lake, model_id, pairs, columns)
        torch.manual_seed(settings.seed)
        mix = ScoreMix.fitted(columns, features)
        figures = {"pairs": len(pairs.images), **_loss_figures(_train(mix, pairs, features, downstream, settings,
                                                                      log))}
    described = mix.to_json()
    record = {"version": text_digest(f"{wanted}:{described}"), "settings": wanted, "pool": pool,
              "given": settings.mix_weights or None, "mix": described, **figures}
    lake.write_json(f"{flyt_dir(model_id)}/mix.json", record)
    return {**record, "retrained": True, "reason": reason if not given else "weights given", "pool_now": pool}


def score_shard(lake: LakeResource, shard: str, model_id: str, scorer: FlytScorer) -> tuple[pa.Table, dict]:
    """Write the shard's scores/flyt (key, shard, flyt); the table and its figures."""
    keys, image, text = load_embeddings(lake, shard, model_id)
    table = pa.table({"key": keys.column("key"), "shard": keys.column("shard"),
                      "flyt": pa.array(score_pairs(scorer, image, text), pa.float32())})
    return table, write_scores(lake, shard, "flyt", table, model_id)


def read_score_mix(lake: LakeResource, model_id: str) -> ScoreMix:
    """The committed M-FLYT mix; a clear error when there is none."""
    record = committed_mix(lake, model_id)
    if record is None:
        raise ValueError("no M-FLYT mix yet: materialize flyt_mix first")
    return ScoreMix.from_json(record["mix"])


def mix_shard(lake: LakeResource, shard: str, model_id: str, mix: ScoreMix) -> tuple[pa.Table, dict]:
    """Write the shard's scores/mflyt (key, shard, mflyt) with `mix`."""
    import torch

    keys = committed_keys(lake, shard, model_id)[0]
    features = shard_columns(lake, shard, model_id, mix.columns, keys)
    with torch.inference_mode():
        scores = mix(torch.as_tensor(features, dtype=torch.float32)).numpy()
    table = pa.table({"key": keys.column("key"), "shard": keys.column("shard"),
                      "mflyt": pa.array(scores, pa.float32())})
    return table, write_scores(lake, shard, "mflyt", table, model_id)
