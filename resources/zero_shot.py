"""Zero-shot heads: a score from the CLIP model itself, for any model, with no trained head.

A prompt set (a TOML file in resources/terms/) names two or more classes, each with a few
prompts. Each class is embedded as CLIP's zero-shot classifier embeds it: the prompts'
normalized text embeddings averaged and normalized again (prompt ensembling, Radford et al.
2021). An image's class probabilities are the softmax of its cosine similarity to each
class times the model's logit scale; the score is the probability of the target class,
mapped linearly onto [low, high]: [0, 1] for punsafe and pwatermark, [1, 10] for an
aesthetic rating.

The same idea is used in the field: the Stable Diffusion safety checker compares CLIP image
embeddings with unsafe-concept embeddings, clip-retrieval's violence detector compares an
image with a pair of prompts, and CLIP-IQA rates quality with antonym prompts ("Good
photo." / "Bad photo."). The prompt files are data: edit them, and the score asset's code
version (which includes the file's digest) marks its scores stale.
"""

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# CLIP clamps its learned temperature at 100 (log scale 4.6052).
MAX_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class PromptSet:
    """Classes and their prompts, the class whose probability is the score, and its range."""

    column: str
    target: str
    classes: dict[str, tuple[str, ...]]
    low: float = 0.0
    high: float = 1.0

    @classmethod
    def load(cls, path: str | Path) -> "PromptSet":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"prompt set {path}: {error}") from None
        classes = data.get("classes")
        if not isinstance(classes, dict) or len(classes) < 2:
            raise ValueError(f"prompt set {path}: needs a [classes] table with at least two classes")
        for name, prompts in classes.items():
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
                raise ValueError(f"prompt set {path}: class {name!r} needs a list of non-empty prompts")
        target = data.get("target")
        if target not in classes:
            raise ValueError(f"prompt set {path}: target {target!r} is not one of its classes {sorted(classes)}")
        low, high = (float(v) for v in data.get("range", [0.0, 1.0]))
        return cls(str(data.get("column", path.stem)), target,
                   {name: tuple(prompts) for name, prompts in classes.items()}, low, high)


def logit_scale(model: Any) -> float:
    """The model's learned temperature (exp of open_clip's `logit_scale`), clamped as CLIP does."""
    scale = getattr(model, "logit_scale", None)
    if scale is None:
        return MAX_LOGIT_SCALE
    return float(min(np.exp(float(scale.detach().float().reshape(-1)[0])), MAX_LOGIT_SCALE))


class ZeroShotHead:
    """Scores from the softmax over class embeddings; `predict` takes normalized image embeddings."""

    def __init__(self, class_embeddings: np.ndarray, target_index: int, scale: float, low: float = 0.0,
                 high: float = 1.0):
        self.class_embeddings = np.ascontiguousarray(class_embeddings, dtype=np.float32)
        self.target_index = target_index
        self.scale = scale
        self.low, self.high = low, high

    @classmethod
    def build(cls, prompts: PromptSet, encode_text: Callable[[list[str]], np.ndarray],
              scale: float) -> "ZeroShotHead":
        """Embed each class's prompts with `encode_text` (normalized text embeddings)."""
        names = list(prompts.classes)
        embeddings = []
        for name in names:
            encoded = np.asarray(encode_text(list(prompts.classes[name])), dtype=np.float32)
            encoded /= np.maximum(np.linalg.norm(encoded, axis=1, keepdims=True), 1e-12)
            mean = encoded.mean(axis=0)
            embeddings.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        return cls(np.stack(embeddings), names.index(prompts.target), scale, prompts.low, prompts.high)

    @property
    def input_dim(self) -> int:
        return int(self.class_embeddings.shape[1])

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, classes) softmax of scaled cosine similarities."""
        logits = self.scale * (np.asarray(embeddings, dtype=np.float32) @ self.class_embeddings.T)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        if not len(embeddings):
            return np.zeros(0, np.float32)
        target = self.probabilities(embeddings)[:, self.target_index]
        return (self.low + (self.high - self.low) * target).astype(np.float32)
