"""Classifier heads over CLIP image embeddings (NSFW `punsafe`, watermark `pwatermark`).

LAION ships such heads as small networks over normalized CLIP image embeddings. Ours are
multilayer perceptrons stored as safetensors (no pickle, so loading runs no code):
tensors `layers.<i>.weight` / `layers.<i>.bias`, ReLU between layers, a sigmoid at the end,
and metadata naming the embedding model and the output column.
"""

import os
from pathlib import Path

import numpy as np
import torch
from dagster import ConfigurableResource
from pydantic import Field
from safetensors.torch import save_file

from resources.clip_model import DEMO_DIR
from resources.safe_weights import load_safetensors
from resources.versions import file_digest

ACTIVATIONS = ("sigmoid", "identity")


class Head(torch.nn.Module):
    """Linear layers with ReLU between them. `predict` applies the output activation:
    sigmoid for classifiers (a probability in [0, 1]), identity for regressors (a rating)."""

    def __init__(self, sizes: list[int], activation: str = "sigmoid"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.activation = activation
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x.squeeze(-1)

    @torch.inference_mode()
    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Outputs for a (n, dim) array of normalized embeddings."""
        x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
        out = self(x)
        return (torch.sigmoid(out) if self.activation == "sigmoid" else out).numpy().astype(np.float32)

    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        metadata = {**metadata, "activation": self.activation}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "Head":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"classifier head not found: {path}")
        # Refuses pickles and anything that does not parse as safetensors, naming the file.
        state, metadata = load_safetensors(path, "classifier head")
        activation = metadata.get("activation", "sigmoid")
        count = len([k for k in state if k.endswith(".weight")])
        sizes = [state["layers.0.weight"].shape[1]] + [state[f"layers.{i}.weight"].shape[0] for i in range(count)]
        head = cls(sizes, activation)
        head.load_state_dict(state)
        return head.eval()


class HeadsResource(ConfigurableResource):
    """Where the NSFW, watermark and aesthetic heads live. They must match the CLIP model's
    embedding dimension: the demo heads go with the demo model."""

    nsfw_path: str = Field(
        default=os.environ.get("CLIPSIEVE_NSFW_HEAD", str(DEMO_DIR / "nsfw_head.safetensors")),
        description="safetensors file of the NSFW head producing punsafe ($CLIPSIEVE_NSFW_HEAD).",
    )
    watermark_path: str = Field(
        default=os.environ.get("CLIPSIEVE_WATERMARK_HEAD", str(DEMO_DIR / "watermark_head.safetensors")),
        description="safetensors file of the watermark head producing pwatermark ($CLIPSIEVE_WATERMARK_HEAD).",
    )

    aesthetic_path: str = Field(
        default=os.environ.get("CLIPSIEVE_AESTHETIC_HEAD", str(DEMO_DIR / "aesthetic_head.safetensors")),
        description="safetensors file of the aesthetic regressor producing aesthetic ($CLIPSIEVE_AESTHETIC_HEAD).",
    )

    def path(self, name: str) -> str:
        paths = {"nsfw": self.nsfw_path, "watermark": self.watermark_path, "aesthetic": self.aesthetic_path}
        if name not in paths:
            raise KeyError(f"unknown head {name!r}; known: {sorted(paths)}")
        return paths[name]

    def load(self, name: str) -> Head:
        return Head.load(self.path(name))

    def version(self, name: str) -> str:
        """Digest of the head's weights file, part of its score asset's code version."""
        return file_digest(self.path(name)) if os.path.exists(self.path(name)) else "missing"
