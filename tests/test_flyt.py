"""FLYT's parts (assets/flyt/): the weighted CLIP loss against open_clip's own CLIP loss, the
meta-gradient against finite differences, a short training run, the downstream data."""

import copy
import json

import numpy as np
import open_clip
import pytest
import torch

from assets.demo import synthetic
from assets.flyt.downstream import (
    TRAINING_SEED,
    DownstreamSet,
    generate_scenes,
    read_downstream,
    scene_classes,
    write_downstream,
)
from assets.flyt.loss import weighted_clip_loss
from assets.flyt.meta_step import AdamState, DownstreamBatch, UpstreamBatch, lookahead_loss, parameters_of
from assets.flyt.scorer import FlytScorer, load_scorer
from assets.flyt.sources import LabelledImages, PixelPairs
from assets.flyt.training import TrainingSettings, train_scorer
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, ClipModelResource


def batch(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=1)
    text = torch.nn.functional.normalize(image + 0.5 * torch.randn(n, d, generator=generator), dim=1)
    return image, text


def test_with_uniform_weights_the_weighted_loss_is_the_plain_clip_loss():
    image, text = batch()
    scale = torch.tensor(14.3)
    plain = open_clip.ClipLoss()(image, text, scale)
    weighted = weighted_clip_loss(image, text, scale, torch.full((8,), 1 / 8))
    torch.testing.assert_close(weighted, plain)


def test_a_pair_of_weight_zero_drops_out_of_the_batch():
    """Its own term and its place among every other pair's negatives: the loss is the plain
    loss of the batch without it, the others weighted uniformly."""
    image, text = batch()
    weights = torch.full((8,), 1 / 7)
    weights[3] = 0
    keep = torch.tensor([i for i in range(8) if i != 3])
    plain = open_clip.ClipLoss()(image[keep], text[keep], 10.0)
    torch.testing.assert_close(weighted_clip_loss(image, text, 10.0, weights), plain)


def test_the_loss_is_differentiable_in_the_weights_and_the_embeddings():
    image, text = batch()
    scores = torch.zeros(8, requires_grad=True)
    image = image.clone().requires_grad_(True)
    weighted_clip_loss(image, text, 10.0, torch.softmax(scores, dim=0)).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    assert image.grad is not None and torch.isfinite(image.grad).all()
    # Raising a well-matched pair's weight lowers the loss: its gradient is the most negative.
    image, text = batch()
    text = text.clone()
    text[5] = image[5]  # pair 5 now matches exactly
    scores = torch.zeros(8, requires_grad=True)
    weighted_clip_loss(image, text, 10.0, torch.softmax(scores, dim=0)).backward()
    assert int(torch.argmin(scores.grad)) == 5


def test_a_batch_that_does_not_line_up_is_refused():
    image, text = batch()
    with pytest.raises(ValueError, match="one batch"):
        weighted_clip_loss(image, text[:4], 10.0, torch.full((8,), 1 / 8))


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> torch.nn.Module:
    """A one-layer CLIP in float64 (random weights): finite differences need the precision."""
    config = tmp_path_factory.mktemp("tiny") / "clipsieve-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    return open_clip.create_model("clipsieve-tiny-clip").double()


@pytest.mark.parametrize("inner, lr", [("sgd", 0.5), ("adamw", 1e-3)])
def test_the_meta_gradient_matches_finite_differences_on_four_pairs(tiny_clip, inner, lr):
    generator = torch.Generator().manual_seed(1)
    upstream = UpstreamBatch(torch.randn(4, 3, 16, 16, generator=generator, dtype=torch.float64),
                             torch.randint(1, 400, (4, 8), generator=generator))
    downstream = DownstreamBatch(torch.randn(6, 3, 16, 16, generator=generator, dtype=torch.float64),
                                 torch.tensor([0, 1, 2, 0, 1, 2]),
                                 torch.randint(1, 400, (6, 8), generator=generator), templates=2)
    scores = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    params = parameters_of(tiny_clip)
    adam = None
    if inner == "adamw":  # moments from two earlier steps on other weights, as in training
        adam = AdamState.start(params)
        for earlier in (torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0.5, 0.5, 0])):
            _, _, adam = lookahead_loss(tiny_clip, params, earlier.double(), upstream, downstream, lr, adam=adam)
            adam = adam.detached()
    loss = lookahead_loss(tiny_clip, params, scores, upstream, downstream, lr, adam=adam)[0]
    (meta_gradient,) = torch.autograd.grad(loss, scores)

    def at(point: torch.Tensor) -> float:
        return lookahead_loss(tiny_clip, parameters_of(tiny_clip), point, upstream, downstream, lr, adam=adam)[0].item()

    eps = 1e-5
    finite = torch.tensor([(at(scores.detach() + eps * e) - at(scores.detach() - eps * e)) / (2 * eps)
                           for e in torch.eye(4, dtype=torch.float64)], dtype=torch.float64)
    assert meta_gradient.abs().max() > 1e-3  # the weights matter, so the comparison means something
    torch.testing.assert_close(meta_gradient, finite, rtol=1e-4, atol=1e-7)
    # The softmax makes the scores' mean irrelevant: the meta-gradient sums to zero.
    assert abs(meta_gradient.sum().item()) < 1e-9


def _scene_pairs(count: int, seed: int) -> tuple[list[bytes], list[str], np.ndarray]:
    """Scenes with their true caption (even positions) or a junk one (odd positions)."""
    rng = np.random.default_rng(seed)
    images, captions, matched = [], [], []
    for i in range(count):
        scene = synthetic.random_scene(rng)
        images.append(synthetic.jpeg_bytes(synthetic.render(scene, 96, 96, rng)))
        captions.append(synthetic.english_caption(scene, rng) if i % 2 == 0 else synthetic.junk_caption(rng))
        matched.append(i % 2 == 0)
    return images, captions, np.array(matched)


def test_a_short_seeded_training_run_lowers_the_downstream_loss():
    """The demo model as the reference, 32 scene pairs (half with junk captions) upstream and
    32 labelled scenes downstream, each step over all of them with the reference held still:
    every step then looks ahead from the same place on the same data, so the loss it reports
    is the objective itself, and eight scorer steps lower it."""
    clip = ClipModelResource(model_name=DEMO_MODEL, pretrained=DEMO_CHECKPOINT).load()
    cached = {name: value.clone() for name, value in clip.model.state_dict().items()}
    reference = copy.deepcopy(clip.model).float()  # the loaded model is the process's shared one
    images, captions, _ = _scene_pairs(32, seed=7000)
    with torch.no_grad():
        pixels = torch.stack([clip.preprocess(image) for image in _decoded(images)])
        features = FlytScorer.features(reference.encode_image(pixels, normalize=True),
                                       reference.encode_text(clip.tokenizer(captions), normalize=True))
    upstream = PixelPairs(images, captions, features.numpy(), clip.preprocess, clip.tokenizer)
    downstream = LabelledImages(generate_scenes(32, TRAINING_SEED), clip.preprocess, clip.tokenizer)
    torch.manual_seed(0)
    scorer = FlytScorer(features.shape[1] // 2, hidden=64)
    settings = TrainingSettings(steps=8, upstream_batch=32, downstream_batch=32, scorer_lr=3e-3, inner="sgd",
                                reference_lr=1e-3, train_reference=False, seed=0)
    history = train_scorer(scorer, reference, upstream, downstream, settings)
    assert len(history.losses) == 8 and all(np.isfinite(history.losses))
    assert min(history.losses[-3:]) < history.losses[0] - 0.1
    for name, value in clip.model.state_dict().items():  # what the embedding steps use is untouched
        assert value.dtype == cached[name].dtype and torch.equal(value, cached[name]), name


def _decoded(images: list[bytes]):
    from assets.crawl.images import as_mode, open_image

    return [as_mode(open_image(data), "RGB") for data in images]


def test_a_scorer_is_saved_with_its_model_and_refused_for_another(tmp_path):
    scorer = FlytScorer(8, hidden=4)
    scorer.save(tmp_path / "scorer.safetensors", "model-a")
    loaded = load_scorer(tmp_path / "scorer.safetensors", "model-a")
    features = torch.randn(5, 16)
    torch.testing.assert_close(loaded(features), scorer.eval()(features))
    with pytest.raises(ValueError, match="trained on model-a embeddings, not model-b"):
        load_scorer(tmp_path / "scorer.safetensors", "model-b")


def test_downstream_scenes_are_labelled_by_colour_and_shape_and_read_back(tmp_path):
    data = generate_scenes(30, TRAINING_SEED)
    assert len(data) == 30 and data.classes == scene_classes() and len(data.classes) == 72
    assert data.prompts()[0][0] == "a photo of a red circle."
    path = write_downstream(data, tmp_path / "downstream.parquet")
    again = read_downstream(path)
    assert again.images == data.images and np.array_equal(again.labels, data.labels)
    assert generate_scenes(30, TRAINING_SEED).images == data.images  # seeded
    bad = DownstreamSet(data.images[:2], np.array([0, 99]), ["a", "b"], ["{} photo"])
    with pytest.raises(ValueError, match="outside its 2 classes"):
        read_downstream(write_downstream(bad, tmp_path / "bad.parquet"))


def test_materialize_with_flyt_trains_the_scorer_scores_every_shard_and_samples_by_it(tmp_path):
    """`clipsieve materialize --flyt`: the flyt group runs after the pool it trains on, every
    shard gets its FLYT score, flyt_scs draws as many times as the pool has pairs, evaluate
    measures the score against each defect class; asked again, the scorer is kept."""
    import pyarrow.parquet as pq

    from assets.demo.sample_crawl import write_sample_crawl
    from assets.flyt.update import update_scorer
    from resources.clip_model import model_id
    from resources.crawl import CrawlResource
    from resources.flyt import FlytSettings
    from resources.lake import LakeResource
    from tests.conftest import run_cli

    crawl, lake_root = tmp_path / "crawl", tmp_path / "lake"
    write_sample_crawl(crawl, 2, 30, seed=11)
    env = {"DAGSTER_HOME": str(tmp_path / "home"), "CLIPSIEVE_FLYT_STEPS": "3"}
    result = run_cli("materialize", "--crawl", str(crawl), "--lake", str(lake_root), "--in-process", "--flyt",
                     env=env)
    assert "flyt: materializing" in result.stdout
    lake, model = LakeResource(root=str(lake_root)), model_id(DEMO_MODEL, DEMO_CHECKPOINT)
    record = lake.read_json(f"flyt/{model}/scorer.json")
    pool = sum(lake.parquet_rows(f"shards/{s}/embeddings/{model}/keys.parquet") for s in ("00000", "00001"))
    assert record["steps"] == 3 and record["pairs"] == record["pool"] == pool
    for shard in ("00000", "00001"):
        scored = lake.read_parquet(f"shards/{shard}/scores/{model}/flyt.parquet")
        assert scored.num_rows == lake.parquet_rows(f"shards/{shard}/embeddings/{model}/keys.parquet")
        assert np.isfinite(scored.column("flyt").to_numpy()).all()
    for policy in ("flyt_scs", "mflyt_scs"):
        members = pq.read_table(lake_root / "subsets" / policy / "members.parquet")
        assert members.column("draws").to_numpy().sum() == pool
    mix = lake.read_json(f"flyt/{model}/mix.json")
    assert mix["mix"]["columns"][:5] == ["similarity", "punsafe", "pwatermark", "aesthetic", "flyt"]
    assert any(w != 0 for w in mix["mix"]["weights"])  # trained away from the uniform start
    mixed = lake.read_parquet(f"shards/00001/scores/{model}/mflyt.parquet")
    assert np.isfinite(mixed.column("mflyt").to_numpy()).all()
    evaluated = run_cli("evaluate", "--lake", str(lake_root), "--truth", str(crawl / "ground_truth.parquet"))
    assert "The FLYT score against each defect class" in evaluated.stdout
    kept = update_scorer(lake, CrawlResource(root=str(crawl)), model, ["00000", "00001"], FlytSettings(steps=3))
    assert not kept["retrained"] and kept["version"] == record["version"]


def test_a_mix_given_in_a_file_weights_its_standardized_columns_and_counts_missing_as_the_mean(tmp_path):
    from assets.flyt.mix import ScoreMix, read_mix

    (tmp_path / "mix.json").write_text(json.dumps({"columns": ["similarity", "punsafe"], "weights": [2.0, -1.0],
                                                   "mean": [0.3, 0.1], "std": [0.1, 0.2], "bias": 0.5}))
    mix = read_mix(tmp_path / "mix.json")
    features = torch.tensor([[0.4, 0.1], [0.3, float("nan")], [0.2, 0.5]])
    torch.testing.assert_close(mix(features), torch.tensor([2.5, 0.5, -3.5]))
    assert ScoreMix.from_json(mix.to_json()).to_json() == mix.to_json()
    with pytest.raises(ValueError, match="unknown mix column"):
        ScoreMix(["colour"], np.zeros(1), np.ones(1))
    fitted = ScoreMix.fitted(["similarity"], np.array([[0.2], [0.4], [np.nan]]))
    torch.testing.assert_close(fitted(torch.tensor([[0.3]])), torch.tensor([0.0]))  # untrained: all alike
