"""Published heads as users download them, converted to the project's safetensors heads.

    clipsieve heads import KIND FILE --out HEAD.safetensors

Kinds (the layouts of the files people download):
- laion-aesthetic-v1: LAION's aesthetic predictor v1 (`sa_0_4_vit_b_32_linear.pth`,
  `sa_0_4_vit_l_14_linear.pth`): a state dict of one Linear, keys `weight`, `bias`, over
  the normalized image embedding, giving a 1-10 rating.
- laion-aesthetic-v2: the improved aesthetic predictor (`sac+logos+ava1-l14-linearMSE.pth`):
  Linear layers 768 -> 1024 -> 128 -> 64 -> 16 -> 1 at keys `layers.0/2/4/6/7.*`, with
  dropout and no activation between them (dropout is the identity at inference).
- mlp: any state dict of Linear layers over the image embedding, in key order (numbers in
  keys compared as numbers), with the activations the user states: one between every pair
  of layers (`hidden_activation`) and one at the end (`activation`: sigmoid for a
  probability, identity for a rating). A torch port of LAION's CLIP-based NSFW detector is
  such a file.

Files are read with `torch.load(weights_only=True)` (resources/safe_weights.py): no pickled
code runs. Only Linear weights and biases are accepted: any other tensor (a normalization
layer's statistics, say) is refused by name, as the head could not reproduce it.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from resources.heads import HEADS, Head
from resources.safe_weights import load_state_dict


@dataclass(frozen=True)
class Layout:
    column: str
    activation: str
    hidden_activation: str
    sizes: tuple[int, ...] | None = None  # the published sizes, checked when given (the first may vary)


LAYOUTS = {
    "laion-aesthetic-v1": Layout("aesthetic", "identity", "identity"),
    "laion-aesthetic-v2": Layout("aesthetic", "identity", "identity", (768, 1024, 128, 64, 16, 1)),
    "mlp": Layout("", "sigmoid", "relu"),
}


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def linear_layers(state: dict[str, torch.Tensor], source: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each Linear layer in key order, checked to chain into one another."""
    weights = sorted((k for k, v in state.items() if k == "weight" or k.endswith(".weight")), key=_natural_key)
    if not weights:
        raise ValueError(f"{source}: no Linear weights (keys ending in 'weight') in {sorted(state)[:8]}")
    layers, used = [], set()
    for key in weights:
        weight = state[key]
        if weight.dim() != 2:
            raise ValueError(f"{source}: {key} has shape {tuple(weight.shape)}, not a Linear layer's (out, in)")
        bias_key = key[: -len("weight")] + "bias"
        bias = state.get(bias_key, torch.zeros(weight.shape[0]))
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{source}: {bias_key} has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")
        if layers and weight.shape[1] != layers[-1][0].shape[0]:
            raise ValueError(f"{source}: {key} takes {weight.shape[1]} inputs but the layer before gives "
                             f"{layers[-1][0].shape[0]}")
        layers.append((weight.float(), bias.float()))
        used |= {key, bias_key}
    other = sorted(set(state) - used)
    if other:
        raise ValueError(f"{source}: tensors that are not Linear weights or biases: {other[:8]}")
    if layers[-1][0].shape[0] != 1:
        raise ValueError(f"{source}: the last layer gives {layers[-1][0].shape[0]} outputs; a head gives one score")
    return layers


def import_head(kind: str, path: str | Path, column: str | None = None, activation: str | None = None,
                hidden_activation: str | None = None) -> tuple[Head, dict[str, str]]:
    """The head in `path` (a `kind` layout) and the metadata to save it with."""
    if kind not in LAYOUTS:
        raise ValueError(f"unknown head kind {kind!r}; known: {sorted(LAYOUTS)}")
    layout = LAYOUTS[kind]
    column = column or layout.column
    if column not in {c for c, _ in HEADS.values()}:
        raise ValueError(f"--column must be one of {sorted(c for c, _ in HEADS.values())} for kind {kind}")
    layers = linear_layers(load_state_dict(path, "head"), str(path))
    sizes = [layers[0][0].shape[1]] + [w.shape[0] for w, _ in layers]
    if layout.sizes is not None and tuple(sizes) != layout.sizes:
        raise ValueError(f"{path}: layer sizes {sizes}, but {kind} has {list(layout.sizes)}")
    head = Head(sizes, activation or layout.activation, hidden_activation or layout.hidden_activation)
    with torch.no_grad():
        for layer, (weight, bias) in zip(head.layers, layers):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    return head.eval(), {"output": column, "source_kind": kind, "source_file": Path(path).name}
