"""Heads over CLIP image embeddings: `punsafe`, `pwatermark`, the `aesthetic` rating and
`ptext` (rendered text in the image, which preference pairs leave out: assets/preference/).

Each of the three comes from one of two kinds of head:
- file: a multilayer perceptron stored as safetensors (no pickle, so loading runs no
  code): tensors `layers.<i>.weight` / `layers.<i>.bias`, metadata `hidden_activation`
  (between layers; ReLU when absent) and `activation` (at the end: sigmoid for a
  probability, identity for a rating). `clipsieve heads import` writes such files from
  LAION's published heads (resources/head_import.py).
- zero_shot: prompts encoded by the model's own text tower (resources/zero_shot.py), so
  any open_clip model has all three scores on its first run.

`HeadsResource.kind` chooses: "auto" takes the head file when its input size is the
model's embedding size and zero-shot otherwise (the demo heads fit the demo model; a
ViT-B-32 gets zero-shot heads until it is given files of its own).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from dagster import ConfigurableResource
from pydantic import Field
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from resources.clip_model import DEMO_DIR
from resources.curation_files import TERMS_DIR
from resources.safe_weights import UnsafeWeightsError, check_safetensors, load_safetensors
from resources.versions import file_digest

ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}
OUTPUT_ACTIVATIONS = ("sigmoid", "identity")
# head -> (output column, the cut-off its score is read at: LAION's punsafe 0.5 and
# pwatermark 0.8, LAION-Aesthetics' rating 7; ptext: our 0.5, no published value)
HEADS = {"nsfw": ("punsafe", 0.5), "watermark": ("pwatermark", 0.8), "aesthetic": ("aesthetic", 7.0),
         "text_in_image": ("ptext", 0.5)}
KINDS = ("auto", "file", "zero_shot")


class Head(torch.nn.Module):
    """Linear layers with `hidden_activation` between them; `predict` applies the output
    activation: sigmoid for classifiers (a probability in [0, 1]), identity for regressors."""

    def __init__(self, sizes: list[int], activation: str = "sigmoid", hidden_activation: str = "relu"):
        super().__init__()
        if activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"activation must be one of {OUTPUT_ACTIVATIONS}, not {activation!r}")
        if hidden_activation not in ACTIVATIONS:
            raise ValueError(f"hidden_activation must be one of {sorted(ACTIVATIONS)}, not {hidden_activation!r}")
        self.activation = activation
        self.hidden_activation = hidden_activation
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        between = ACTIVATIONS[self.hidden_activation]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = between(x)
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
        metadata = {**metadata, "activation": self.activation, "hidden_activation": self.hidden_activation}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> "Head":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"head file not found: {path}")
        # Refuses pickles and anything that does not parse as safetensors, naming the file.
        state, metadata = load_safetensors(path, "head")
        count = len([k for k in state if k.endswith(".weight")])
        try:
            sizes = [state["layers.0.weight"].shape[1]] + [state[f"layers.{i}.weight"].shape[0]
                                                             for i in range(count)]
            head = cls(sizes, metadata.get("activation", "sigmoid"), metadata.get("hidden_activation", "relu"))
            head.load_state_dict(state)
        except (KeyError, IndexError, RuntimeError, ValueError) as error:
            raise ValueError(f"head {path} is not a head of layers.<i>.weight / .bias tensors "
                             f"({type(error).__name__}: {error}); convert a downloaded head with "
                             "`clipsieve heads import`") from None
        return head.eval()


def head_input_dim(path: str | Path) -> int | None:
    """The embedding size a head file takes, read from its header (None: no file there).

    A file that is not a safetensors head is refused, naming it: a downloaded .pth is
    converted with `clipsieve heads import` first, and is never unpickled here."""
    if not path or not os.path.isfile(path):
        return None
    if Path(path).suffix != ".safetensors":
        raise UnsafeWeightsError(f"refusing head {path}: heads must be .safetensors files "
                                 "(convert a downloaded .pth with `clipsieve heads import`)")
    check_safetensors(path, "head")
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(f.get_slice("layers.0.weight").get_shape()[1])
    except (SafetensorError, KeyError, IndexError) as error:
        raise ValueError(f"head {path} has no layers.0.weight of shape (out, in): {error}") from None


@dataclass(frozen=True)
class HeadChoice:
    """Which head gives a score: its kind, the file it comes from, that file's digest."""

    name: str
    kind: str  # "file" or "zero_shot"
    source: str  # the head file, or the prompts file
    version: str
    reason: str

    @property
    def column(self) -> str:
        return HEADS[self.name][0]

    def metadata(self) -> dict[str, str]:
        return {"head_kind": self.kind, "head_source": self.source, "head_version": self.version,
                "head_reason": self.reason}


class HeadsResource(ConfigurableResource):
    """Which heads give punsafe, pwatermark and aesthetic: head files or zero-shot prompts."""

    kind: str = Field(
        default="auto",
        description="auto: a head file when it takes the model's embedding size, else zero-shot from the prompts "
        "file; file: always the head files (a size mismatch fails the step); zero_shot: always the prompts.",
    )
    nsfw_path: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_NSFW_HEAD",
                                                str(DEMO_DIR / "nsfw_head.safetensors")),
        description="safetensors head producing punsafe ($CLIPSIEVE_NSFW_HEAD; default: the demo model's).",
    )
    watermark_path: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_WATERMARK_HEAD",
                                                str(DEMO_DIR / "watermark_head.safetensors")),
        description="safetensors head producing pwatermark ($CLIPSIEVE_WATERMARK_HEAD; default: the demo model's).",
    )
    aesthetic_path: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_AESTHETIC_HEAD",
                                                str(DEMO_DIR / "aesthetic_head.safetensors")),
        description="safetensors regressor producing aesthetic ($CLIPSIEVE_AESTHETIC_HEAD; default: the demo "
        "model's). `clipsieve heads import` converts LAION's aesthetic predictors.",
    )
    text_in_image_path: str = Field(
        default_factory=lambda: os.environ.get("CLIPSIEVE_TEXT_IN_IMAGE_HEAD",
                                                str(DEMO_DIR / "text_in_image_head.safetensors")),
        description="safetensors head producing ptext, the probability of rendered text in the image "
        "($CLIPSIEVE_TEXT_IN_IMAGE_HEAD; default: the demo model's).",
    )
    nsfw_prompts: str = Field(default=str(TERMS_DIR / "zero_shot_nsfw.toml"),
                              description="Prompts of the zero-shot NSFW head (TOML: classes, target, range).")
    watermark_prompts: str = Field(default=str(TERMS_DIR / "zero_shot_watermark.toml"),
                                   description="Prompts of the zero-shot watermark head.")
    aesthetic_prompts: str = Field(default=str(TERMS_DIR / "zero_shot_aesthetic.toml"),
                                   description="Antonym prompts of the zero-shot aesthetic rating (CLIP-IQA style).")
    text_in_image_prompts: str = Field(default=str(TERMS_DIR / "zero_shot_text_in_image.toml"),
                                       description="Prompts of the zero-shot text-in-image head (ptext).")

    def path(self, name: str) -> str:
        paths = {"nsfw": self.nsfw_path, "watermark": self.watermark_path, "aesthetic": self.aesthetic_path,
                 "text_in_image": self.text_in_image_path}
        if name not in paths:
            raise KeyError(f"unknown head {name!r}; known: {sorted(paths)}")
        return paths[name]

    def prompts(self, name: str) -> str:
        return {"nsfw": self.nsfw_prompts, "watermark": self.watermark_prompts,
                "aesthetic": self.aesthetic_prompts, "text_in_image": self.text_in_image_prompts}[name]

    def choose(self, name: str, embedding_dim: int | None) -> HeadChoice:
        """The head that gives `name`'s score for a model with `embedding_dim`-d embeddings
        (None: a model whose size is not known before it loads; auto then takes the file)."""
        if self.kind not in KINDS:
            raise ValueError(f"heads kind must be one of {KINDS}, not {self.kind!r}")
        path, prompts = self.path(name), self.prompts(name)
        if self.kind == "file":
            version = file_digest(path) if os.path.isfile(path) else "missing"
            return HeadChoice(name, "file", path, version, "kind = file")
        if self.kind == "auto":
            dim = head_input_dim(path)
            if dim is not None and embedding_dim in (dim, None):
                return HeadChoice(name, "file", path, file_digest(path), f"the head file takes {dim}-d embeddings")
            reason = (f"no head file at {path!r}" if dim is None else
                      f"the head file takes {dim}-d embeddings, the model gives {embedding_dim}-d")
        else:
            reason = "kind = zero_shot"
        if not os.path.isfile(prompts):
            raise FileNotFoundError(f"{name}: prompts file not found: {prompts}")
        return HeadChoice(name, "zero_shot", prompts, file_digest(prompts), reason)

    def choices(self, name: str, embedding_dim: int | None) -> list[HeadChoice]:
        """Every head that can give `name`'s score for this model, whatever `kind` says: the
        file when it takes the model's embedding size, and the zero-shot prompts (`evaluation`
        measures each)."""
        found = []
        dim = head_input_dim(self.path(name))
        if dim is not None and embedding_dim in (dim, None):
            found.append(HeadChoice(name, "file", self.path(name), file_digest(self.path(name)),
                                    f"the head file takes {dim}-d embeddings"))
        if os.path.isfile(self.prompts(name)):
            found.append(HeadChoice(name, "zero_shot", self.prompts(name), file_digest(self.prompts(name)),
                                    "compared in evaluation"))
        return found

    def load(self, name: str) -> Head:
        """The head file of `name` (file heads only)."""
        return Head.load(self.path(name))
