"""The exported toxicity model gives what alt-profanity-check's scikit-learn pipeline gives."""

import numpy as np
from profanity_check import predict_prob

from assets.demo.synthetic import english_caption, foreign_caption, junk_caption, random_scene, toxic_caption
from resources.toxicity_model import _cached_arrays, load_toxicity_model

EDGE_CASES = [
    "", "   ", "!!!", "a", "the and of to", "You Stupid IDIOT", "you stupid idiot " * 40,
    "ÉCOLE straße İstanbul ǅemal", "shit_head fuck2 f*ck s.h.i.t", "idiot\nidiot\tidiot",
    "日本語のキャプション", "1234 5678 00", "damn damn damn damn damn nice",
]


def captions(n: int) -> list[str]:
    """The sample crawl's kinds of alt-text: plain, foreign, junk and abusive."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        scene = random_scene(rng)
        kind = i % 4
        out.append(english_caption(scene, rng) if kind == 0 else foreign_caption(scene, rng)[0] if kind == 1
                   else junk_caption(rng) if kind == 2 else toxic_caption(scene, rng))
    return out


def test_probabilities_match_the_package():
    texts = captions(400) + EDGE_CASES
    ours = load_toxicity_model().probability(texts)
    theirs = predict_prob(texts)
    assert ours.shape == theirs.shape == (len(texts),)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    # Not a constant: abusive captions score high and plain ones low, as in the package.
    assert ours[3:400:4].min() > 0.5 and np.median(ours[0:400:4]) < 0.1
    assert load_toxicity_model().probability([]).shape == (0,)


def test_export_is_cached_and_reloads_identically(tmp_path):
    path = tmp_path / "cache" / "profanity_check-test.npz"
    exported = _cached_arrays(path)  # no cache yet: exported from the package, then written
    assert path.exists()
    reloaded = _cached_arrays(path)  # read back from the file
    assert exported.keys() == reloaded.keys()
    for name in exported:
        np.testing.assert_array_equal(exported[name], reloaded[name])
    # A damaged cache file is exported again, not trusted.
    path.write_bytes(b"not an npz")
    np.testing.assert_array_equal(_cached_arrays(path)["weights"], exported["weights"])
