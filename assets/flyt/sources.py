"""Batches for FLYT's loop (assets/flyt/training.py), decoded a batch at a time.

`PixelPairs`: upstream pairs as encoded images and captions for the reference model, with
the features the scorer reads. `LabelledImages`: a downstream set with its classes' prompts.
Images were checked and decoded once already (the samples step); these are the same bytes.
"""

import numpy as np
import torch

from assets.crawl.images import as_mode, open_image
from assets.flyt.downstream import DownstreamSet
from assets.flyt.meta_step import DownstreamBatch, UpstreamBatch


def _pixels(images: list[bytes], indices: np.ndarray, preprocess) -> torch.Tensor:
    return torch.stack([preprocess(as_mode(open_image(images[i]), "RGB")) for i in indices])


class PixelPairs:
    """Upstream pairs: image bytes and captions for the reference model, features for the scorer."""

    def __init__(self, images: list[bytes], captions: list[str], features: np.ndarray, preprocess, tokenizer):
        if not len(images) == len(captions) == len(features):
            raise ValueError(f"{len(images)} images, {len(captions)} captions and {len(features)} feature rows")
        self.images, self.preprocess = images, preprocess
        self.tokens = tokenizer(captions)
        self.features = torch.as_tensor(features, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: np.ndarray) -> UpstreamBatch:
        return UpstreamBatch(_pixels(self.images, indices, self.preprocess), self.tokens[indices])


class LabelledImages:
    """A downstream set for the reference model: its images, labels and every class's prompts."""

    def __init__(self, data: DownstreamSet, preprocess, tokenizer):
        self.data, self.preprocess = data, preprocess
        self.prompt_tokens = tokenizer([prompt for prompts in data.prompts() for prompt in prompts])
        self.labels = torch.as_tensor(data.labels)

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: np.ndarray) -> DownstreamBatch:
        return DownstreamBatch(_pixels(self.data.images, indices, self.preprocess), self.labels[indices],
                               self.prompt_tokens, len(self.data.templates))
