"""The embeddings stage's speed options change speed, not results."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from assets.crawl.pixels import split_transform
from assets.definitions.embeddings import build_embeddings_asset
from assets.demo.sample_crawl import write_sample_crawl
from assets.embeddings import _text_features, embed_shard, encode_images, encode_texts
from assets.samples import read_samples
from resources.clip_model import (
    DEMO_CHECKPOINT,
    DEMO_DIR,
    DEMO_MODEL,
    ClipModelResource,
    EmbedOptions,
    cpu_has_bf16,
    resolve_precision,
)
from resources.crawl import CrawlResource


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    out = tmp_path_factory.mktemp("embed_crawl")
    write_sample_crawl(out, shards=1, samples_per_shard=150, seed=11)
    crawl = CrawlResource(root=str(out))
    return crawl, read_samples(crawl, "00000")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float32), b.astype(np.float32)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_text_cut_to_longest_caption_equals_full_context():
    clip = ClipModelResource(precision="fp32").load()
    captions = ["a red circle", "two small blue triangles on a green background in soft morning light", "x", ""]
    tokens = clip.tokenizer(captions)
    assert int((tokens != 0).sum(dim=1).max()) < tokens.shape[1]  # there is padding to cut
    with torch.inference_mode():
        full = clip.model.encode_text(tokens, normalize=True).numpy()
        trimmed = _text_features(clip.model, tokens, trim=True).numpy()
    assert np.abs(full - trimmed).max() < 1e-3  # fp16 tolerance; in practice ~1e-7
    # Batched, sorted by length and scattered back: the same vectors in the callers' order.
    batched = encode_texts(clip, captions * 3, batch_size=3, trim=True)
    assert np.abs(batched - np.tile(full, (3, 1))).max() < 1e-3


def test_decode_threads_and_batch_size_do_not_change_embeddings(shard):
    crawl, samples = shard
    clip = ClipModelResource(precision="fp32").load()
    inline = embed_shard(crawl, samples, clip, EmbedOptions(batch_size=64, decode_threads=0, trim_text=False))
    reports = []
    threaded = embed_shard(crawl, samples, clip, EmbedOptions(batch_size=17, decode_threads=2, trim_text=True),
                           progress=lambda read, total: reports.append((read, total)))
    ahead = embed_shard(crawl, samples, clip, EmbedOptions(batch_size=17, decode_threads=2, decode_ahead=True))
    assert inline.keys == threaded.keys == ahead.keys and len(inline.keys) > 100
    assert sorted(inline.failures) == sorted(threaded.failures) == sorted(ahead.failures)
    assert np.abs(inline.image.astype(np.float32) - threaded.image.astype(np.float32)).max() < 2e-3
    assert np.array_equal(threaded.image, ahead.image)  # same batches, same numbers
    assert _cosines(inline.text, threaded.text).min() > 0.9999
    assert threaded.timings["forward"] > 0 and threaded.timings["total"] >= threaded.timings["forward"]
    # Progress after every batch of 17, up to every usable image read.
    usable = sum(s == "ok" for s in samples.column("image_status").to_pylist())
    assert [read for read, _ in reports] == sorted({min(17 * i, usable) for i in range(1, -(-usable // 17) + 1)})
    assert {total for _, total in reports} == {usable}


def _test_images() -> list[Image.Image]:
    """Pictures of several sizes and shapes, smaller and larger than the models' inputs."""
    rng = np.random.default_rng(3)
    sizes = [(256, 256), (300, 180), (90, 140), (40, 40), (640, 480)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model", ["demo", "ViT-B-32"])
def test_split_preprocess_is_bit_for_bit_the_per_image_transform(model, dtype):
    import open_clip

    preprocess = ClipModelResource().load().preprocess if model == "demo" else \
        open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)[2]
    split = split_transform(preprocess, dtype)
    assert split.batched
    images = _test_images()
    # The per-image transform in float32, then cast to the model's dtype as the model's input.
    expected = torch.stack([preprocess(image) for image in images]).to(dtype)
    batch = split.batch([split.per_image(image) for image in images])
    assert batch.dtype == dtype and batch.shape == expected.shape
    assert torch.equal(batch, expected)


def test_a_transform_of_another_shape_runs_whole_image_by_image():
    from torchvision import transforms

    no_crop = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), transforms.Normalize(
        (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    two_after = transforms.Compose([transforms.CenterCrop(32), transforms.ToTensor(),
                                    transforms.Normalize((0.5,) * 3, (0.2,) * 3), transforms.Lambda(torch.tanh)])
    for preprocess in (no_crop, two_after, lambda image: transforms.functional.to_tensor(image.resize((8, 8)))):
        assert not split_transform(preprocess).batched


@pytest.mark.parametrize("precision", ["amp_bf16", "bf16"])
def test_bfloat16_stays_close_to_fp32_and_is_part_of_the_version(shard, precision):
    crawl, samples = shard
    fp32 = embed_shard(crawl, samples, ClipModelResource(precision="fp32").load())
    bf16 = embed_shard(crawl, samples, ClipModelResource(precision=precision).load())
    versions = [next(iter(build_embeddings_asset("m", p).code_versions_by_key.values())) for p in ("fp32", precision)]
    assert versions[1] == versions[0] + f"+{precision}"
    assert fp32.keys == bf16.keys
    assert _cosines(fp32.image, bf16.image).min() > 0.99
    assert _cosines(fp32.text, bf16.text).min() > 0.99


def test_a_bad_image_in_a_threaded_batch_is_recorded_and_the_rest_embed():
    clip = ClipModelResource().load()
    good = io.BytesIO()
    Image.new("RGB", (80, 80), (0, 0, 255)).save(good, format="JPEG")
    items = [(f"k{i}", good.getvalue() if i != 3 else b"\xff\xd8 truncated") for i in range(10)]
    done, vectors, failures = encode_images(clip, items, batch_size=4, decode_threads=2)
    assert done == [f"k{i}" for i in range(10) if i != 3] and vectors.shape[0] == 9
    assert [k for k, _ in failures] == ["k3"]


def test_auto_precision_is_bf16_only_where_the_cpu_has_it_and_fp16_autocast_on_a_gpu():
    assert resolve_precision("auto", "cpu", has_bf16=True) == "bf16"
    assert resolve_precision("auto", "cpu", has_bf16=False) == "fp32"
    assert resolve_precision("auto", "cuda", has_bf16=False) == "amp"
    assert resolve_precision("fp32", "cpu", has_bf16=True) == "fp32"  # an explicit setting stands
    # The resource's default is auto; what it ran at is what this machine's CPU allows.
    resource = ClipModelResource(device="cpu")
    assert resource.precision == "auto"
    assert resource.load().precision == ("bf16" if cpu_has_bf16() else "fp32")
    version = next(iter(build_embeddings_asset("m", resource.precision).code_versions_by_key.values()))
    assert version.endswith("+m+auto")  # the setting, not the machine's resolution of it


def _fresh_model(**kwargs):
    """The demo model as plain open_clip builds it (random draws, then the checkpoint)."""
    import open_clip

    ClipModelResource().load()  # registers the demo config
    model, _, _ = open_clip.create_model_and_transforms(DEMO_MODEL, **kwargs)
    return model.eval()


def test_loading_without_random_draws_gives_exactly_the_checkpoints_model():
    loaded = ClipModelResource(precision="fp32", device="cpu").load().model
    plain = _fresh_model(pretrained=DEMO_CHECKPOINT)
    ours, theirs = dict(loaded.named_buffers()) | dict(loaded.named_parameters()), \
        dict(plain.named_buffers()) | dict(plain.named_parameters())
    assert ours.keys() == theirs.keys() and len(ours) > 20  # non-persistent buffers included
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    # The draws are back once the load is done: a model built after it is random as before.
    torch.manual_seed(0)
    first = _fresh_model().visual.conv1.weight.clone()
    torch.manual_seed(0)
    assert torch.equal(first, _fresh_model().visual.conv1.weight) and first.abs().sum() > 0


def test_a_checkpoint_missing_a_tensor_is_refused_not_left_uninitialised(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    tensors = load_file(DEMO_CHECKPOINT)
    tensors.pop("visual.conv1.weight")
    save_file(tensors, str(tmp_path / "partial.safetensors"))
    shutil.copy(DEMO_DIR / f"{DEMO_MODEL}.json", tmp_path / f"{DEMO_MODEL}.json")
    with pytest.raises(RuntimeError, match="visual.conv1.weight"):
        ClipModelResource(pretrained=str(tmp_path / "partial.safetensors"), device="cpu").load()
