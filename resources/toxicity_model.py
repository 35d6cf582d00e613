"""alt-profanity-check's toxicity model, read once into plain arrays and applied with numpy.

The package ships a scikit-learn pipeline as joblib pickles: a TfidfVectorizer (lowercased
word unigrams, token pattern `(?u)\\b\\w\\w+\\b`, English stop words, l2 norm) feeding a
CalibratedClassifierCV of five LinearSVCs, each with a sigmoid calibration, averaged.
Unpickling it imports scikit-learn: 2.1 s per process here, for what is a sparse dot
product that takes 6 ms per 2,000 captions. So the first use exports the fitted numbers
(vocabulary, idf, the five weight vectors, intercepts and calibrations) to
$CLIPSIEVE_CACHE_DIR, keyed by the digest of the package's files, and every later process
loads that .npz (no pickle) without scikit-learn.
`ToxicityModel.probability` gives what `profanity_check.predict_prob` gives, to float
rounding (tests/test_toxicity_model.py compares the two).
"""

import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from resources.versions import cache_path, file_digest, write_cache_file

_PACKAGE_FILES = ("vectorizer.joblib", "model.joblib")
# The vectorizer settings the arithmetic below reproduces; an export refuses anything else.
_EXPECTED_VECTORIZER = {"analyzer": "word", "ngram_range": (1, 1), "lowercase": True, "binary": False,
                        "norm": "l2", "use_idf": True, "sublinear_tf": False, "preprocessor": None,
                        "tokenizer": None, "strip_accents": None}


@dataclass(frozen=True)
class ToxicityModel:
    vocabulary: dict[str, int]  # term -> column
    idf: np.ndarray  # (terms,) inverse document frequency
    weights: np.ndarray  # (terms, classifiers) each LinearSVC's coefficients
    intercepts: np.ndarray  # (classifiers,)
    calibration: np.ndarray  # (classifiers, 2) sigmoid a, b: p = 1 / (1 + exp(a * decision + b))
    token_pattern: re.Pattern

    def probability(self, captions: list[str]) -> np.ndarray:
        """Probability that each caption is toxic, as profanity_check.predict_prob."""
        if not captions:
            return np.zeros(0)
        lookup = self.vocabulary.get
        # Tokens outside the vocabulary (stop words among them) carry no weight: drop them.
        ids = [[i for i in map(lookup, self.token_pattern.findall(c.lower())) if i is not None] for c in captions]
        rows = np.repeat(np.arange(len(ids)), [len(t) for t in ids])
        terms = np.fromiter((i for t in ids for i in t), np.int64, count=len(rows))
        # tf-idf per (caption, term): occurrences x idf, then each caption scaled to unit length.
        pairs, counts = np.unique(rows * len(self.idf) + terms, return_counts=True)
        rows, terms = pairs // len(self.idf), pairs % len(self.idf)
        values = counts * self.idf[terms]
        norms = np.sqrt(np.bincount(rows, weights=values ** 2, minlength=len(captions)))
        values = values / norms[rows]
        decisions = np.stack([np.bincount(rows, weights=values * self.weights[terms, k], minlength=len(captions))
                              for k in range(self.weights.shape[1])], axis=1)
        decisions += self.intercepts
        a, b = self.calibration[:, 0], self.calibration[:, 1]
        return (1.0 / (1.0 + np.exp(a * decisions + b))).mean(axis=1)


def _package_dir() -> Path:
    """profanity_check's data folder, found without importing the package (which unpickles)."""
    spec = importlib.util.find_spec("profanity_check")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("alt-profanity-check is not installed (pip install alt-profanity-check)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def package_digest() -> str:
    """Digest of the package's fitted model files: a new release makes the scores stale."""
    folder = _package_dir()
    return "-".join(file_digest(str(folder / name)) for name in _PACKAGE_FILES)


def export_arrays() -> dict[str, np.ndarray]:
    """The fitted numbers of the package's pipeline (imports scikit-learn to unpickle it)."""
    from profanity_check import profanity_check as package
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    vectorizer, model = package.vectorizer, package.model
    params = vectorizer.get_params()
    different = {k: params.get(k) for k, v in _EXPECTED_VECTORIZER.items() if params.get(k) != v}
    if type(vectorizer).__name__ != "TfidfVectorizer" or different:
        raise ValueError(f"profanity_check's vectorizer is not the one clipsieve reproduces: {different}")
    if params["stop_words"] not in (None, "english") or set(vectorizer.vocabulary_) & ENGLISH_STOP_WORDS:
        raise ValueError("profanity_check's vocabulary holds stop words: dropping them would change counts")
    calibrated = model.calibrated_classifiers_
    if any(c.method != "sigmoid" or len(c.calibrators) != 1 for c in calibrated) or list(model.classes_) != [0, 1]:
        raise ValueError("profanity_check's classifier is not a binary sigmoid-calibrated ensemble")
    terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
    return {
        "terms": np.array(terms, dtype=str),
        "idf": np.asarray(vectorizer.idf_, np.float64),
        "weights": np.stack([c.estimator.coef_.ravel() for c in calibrated], axis=1).astype(np.float64),
        "intercepts": np.array([float(np.ravel(c.estimator.intercept_)[0]) for c in calibrated]),
        "calibration": np.array([[c.calibrators[0].a_, c.calibrators[0].b_] for c in calibrated], np.float64),
        "token_pattern": np.array(params["token_pattern"]),
    }


def _cached_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError):
        pass
    arrays = export_arrays()
    write_cache_file(path, lambda f: np.savez_compressed(f, **arrays))  # else the next process exports again
    return arrays


@lru_cache(maxsize=1)
def load_toxicity_model() -> ToxicityModel:
    """The package's model, from the export cache (made on first use)."""
    arrays = _cached_arrays(cache_path(f"profanity_check-{package_digest()}.npz"))
    terms = arrays["terms"].tolist()
    return ToxicityModel(
        vocabulary={term: i for i, term in enumerate(terms)},
        idf=arrays["idf"],
        weights=arrays["weights"],
        intercepts=arrays["intercepts"],
        calibration=arrays["calibration"],
        token_pattern=re.compile(str(arrays["token_pattern"])),
    )
