"""The demo model loads through open_clip's own checkpoint path and ranks captions."""

import io

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from assets.demo.sample_crawl import write_sample_crawl
from assets.embeddings import encode_images, encode_texts
from resources.clip_model import DEMO_CHECKPOINT, DEMO_MODEL, ClipModelResource, model_id
from resources.crawl import CrawlResource
from resources.heads import HeadsResource

HELD_OUT_SEED = 99  # neither the demo crawl's seed (0) nor the training seeds


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Embeddings of a held-out generated crawl: image and matched / mismatched caption."""
    out = tmp_path_factory.mktemp("held_out")
    write_sample_crawl(out, shards=1, samples_per_shard=400, seed=HELD_OUT_SEED)
    truth = {r["key"]: r["defect"] for r in pq.read_table(out / "ground_truth.parquet").to_pylist()}
    rows = [r for r in pq.read_table(out / "00000.parquet").to_pylist() if r["status"] == "success"]
    images = {n[:-4]: d for n, d in CrawlResource(root=str(out)).iter_tar("00000") if n.endswith(".jpg")}
    clip = ClipModelResource().load()
    keys = [r["key"] for r in rows if truth[r["key"]] != "corrupt_image"]
    done, image_emb, _ = encode_images(clip, ((k, images[k]) for k in keys), 128)
    caption = {r["key"]: r["caption"] for r in rows}
    return {"keys": done, "image": image_emb, "truth": truth, "caption": caption, "clip": clip}


def test_checkpoint_loads_through_open_clip_pretrained_path():
    ClipModelResource().load()  # registers the config that sits beside the checkpoint
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL, pretrained=DEMO_CHECKPOINT)
    image = preprocess(Image.new("RGB", (100, 80), (200, 30, 30))).unsqueeze(0)
    with torch.inference_mode():
        features = model.encode_image(image, normalize=True)
    assert features.shape == (1, 128)
    assert model_id(DEMO_MODEL, DEMO_CHECKPOINT).startswith("clipsieve-demo__clipsieve-demo-")


def test_matched_caption_outscores_mismatched_for_90_percent(held_out):
    clean = [i for i, k in enumerate(held_out["keys"]) if held_out["truth"][k] is None]
    rng = np.random.default_rng(0)
    others = rng.permutation(clean)
    matched_captions = [held_out["caption"][held_out["keys"][i]] for i in clean]
    mismatched_captions = [held_out["caption"][held_out["keys"][j]] for j in others]
    keep = [n for n, (a, b) in enumerate(zip(matched_captions, mismatched_captions)) if a != b]
    clip = held_out["clip"]
    matched = encode_texts(clip, [matched_captions[n] for n in keep], 256)
    mismatched = encode_texts(clip, [mismatched_captions[n] for n in keep], 256)
    image = held_out["image"][[clean[n] for n in keep]]
    wins = ((image * matched).sum(1) > (image * mismatched).sum(1)).mean()
    assert len(keep) > 150
    assert wins >= 0.9, wins


def test_heads_separate_their_concept(held_out):
    heads = HeadsResource()
    truth = [held_out["truth"][k] for k in held_out["keys"]]
    for name, defect in (("nsfw", "unsafe"), ("watermark", "watermark")):
        scores = heads.load(name).predict(held_out["image"])
        assert ((scores >= 0) & (scores <= 1)).all()
        positive = scores[[t == defect for t in truth]]
        clean = scores[[t is None for t in truth]]
        assert (positive > 0.5).mean() >= 0.8, name
        assert (clean > 0.5).mean() <= 0.1, name


def test_unreadable_image_is_a_recorded_failure_not_a_crash():
    clip = ClipModelResource().load()
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(good, format="JPEG")
    done, embeddings, failures = encode_images(clip, [("a", good.getvalue()), ("b", b"not an image")], 8)
    assert done == ["a"] and embeddings.shape == (1, 128)
    assert failures[0][0] == "b" and failures[0][1].startswith("unsupported format")


def test_the_model_id_follows_the_config_beside_the_checkpoint(tmp_path):
    import json
    import shutil

    from resources.clip_model import DEMO_DIR

    shutil.copy(DEMO_CHECKPOINT, tmp_path / f"{DEMO_MODEL}.safetensors")
    config = tmp_path / f"{DEMO_MODEL}.json"
    shutil.copy(DEMO_DIR / f"{DEMO_MODEL}.json", config)
    checkpoint = str(tmp_path / f"{DEMO_MODEL}.safetensors")
    before = model_id(DEMO_MODEL, checkpoint)
    assert before == model_id(DEMO_MODEL, DEMO_CHECKPOINT)  # same weights, same config: same model
    edited = json.loads(config.read_text())
    edited["vision_cfg"]["layers"] = 2  # another network over (part of) the same weights
    config.write_text(json.dumps(edited))
    assert model_id(DEMO_MODEL, checkpoint) != before
