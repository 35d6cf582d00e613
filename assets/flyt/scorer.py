"""FLYT's scorer: one score per image-text pair from a frozen CLIP's embeddings of both.

A SwiGLU block over the concatenated image and text embeddings: (W_value x) * silu(W_gate x)
is multiplicative, so it can express how well the two halves agree (a bilinear form), which
a plain ReLU MLP over the concatenation can only approximate. Saved as safetensors with its
sizes and the embedding model it reads in the file's metadata.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_CONFIG_KEY = "clipsieve.flyt_scorer"


class FlytScorer(torch.nn.Module):
    """Scores (n,) of n pairs given image and text embeddings (n, dim) each."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.norm = torch.nn.LayerNorm(2 * dim)
        self.gate = torch.nn.Linear(2 * dim, hidden)
        self.value = torch.nn.Linear(2 * dim, hidden)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features`: (n, 2 * dim), each row an image embedding then its text embedding."""
        x = self.norm(features)
        return self.out(self.value(x) * torch.nn.functional.silu(self.gate(x))).squeeze(-1)

    @staticmethod
    def features(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([image, text], dim=1)

    def save(self, path: str | Path, model_id: str) -> None:
        """Write the weights with the sizes and the embedding model's id."""
        config = {"dim": self.dim, "hidden": self.hidden, "model_id": model_id}
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={_CONFIG_KEY: json.dumps(config)})


def load_scorer(path: str | Path, model_id: str) -> FlytScorer:
    """A scorer saved by `FlytScorer.save`, refused when it was trained on another model's embeddings."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        raw = (file.metadata() or {}).get(_CONFIG_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a FLYT scorer (no {_CONFIG_KEY} metadata)")
    config = json.loads(raw)
    if config["model_id"] != model_id:
        raise ValueError(f"{path}: trained on {config['model_id']} embeddings, not {model_id}")
    scorer = FlytScorer(config["dim"], config["hidden"])
    scorer.load_state_dict(load_file(str(path)))
    return scorer.eval()
