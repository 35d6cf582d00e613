"""Training a FLYT scorer (or M-FLYT's mix of score columns): the loop of assets/flyt/meta_step.py.

Each step draws an upstream batch (pairs with the scorer's features) and a downstream batch
(labelled images), scores the upstream pairs, and takes the scorer's gradient of the
reference model's downstream loss after one step on the pairs weighted by softmax(scores).
The reference then keeps that step: like FLYT's reference model it trains on what the scorer
favours, so the scorer keeps learning what helps a model that is still learning.

Sources give batches by index, so the images are decoded a batch at a time (a pool of encoded
images is small; the same pool as float pixels would not be).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from assets.flyt.meta_step import (
    DOWNSTREAM_LOGIT_SCALE,
    AdamState,
    DownstreamBatch,
    UpstreamBatch,
    lookahead_loss,
    parameters_of,
)


class UpstreamSource(Protocol):
    features: torch.Tensor  # (n, f): what the scorer reads for each pair

    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> UpstreamBatch: ...


class DownstreamSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray) -> DownstreamBatch: ...


@dataclass(frozen=True)
class TrainingSettings:
    steps: int = 150
    upstream_batch: int = 128  # FLYT: 4096
    downstream_batch: int = 128  # FLYT: 3072
    scorer_lr: float = 1e-3  # FLYT's scoring learning rate (AdamW)
    inner: str = "adamw"  # the reference's step: "adamw" (FLYT's, moments carried) or "sgd"
    reference_lr: float = 5e-5  # FLYT's for AdamW; a plain gradient step on the demo model wants ~1e-3
    train_reference: bool = True  # False: every step looks ahead from the same reference
    downstream_logit_scale: float = DOWNSTREAM_LOGIT_SCALE
    seed: int = 0


@dataclass
class TrainingHistory:
    """The downstream loss after each step's lookahead, and the seconds the loop took."""
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_scorer(scorer: torch.nn.Module, reference: torch.nn.Module, upstream: UpstreamSource,
                 downstream: DownstreamSource, settings: TrainingSettings,
                 log: Callable[[str], None] | None = None) -> TrainingHistory:
    """Train `scorer` in place against `reference` (whose parameters it also trains)."""
    if settings.inner not in ("adamw", "sgd"):
        raise ValueError(f"inner must be adamw or sgd, not {settings.inner!r}")
    if len(upstream) < 2 or len(downstream) < 1:
        raise ValueError(f"FLYT needs at least 2 upstream pairs and 1 downstream image, not "
                         f"{len(upstream)} and {len(downstream)}")
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=settings.scorer_lr)
    params = parameters_of(reference)
    adam = AdamState.start(params) if settings.inner == "adamw" else None
    history = TrainingHistory()
    started = time.monotonic()
    scorer.train()
    for step in range(settings.steps):
        up = rng.choice(len(upstream), min(settings.upstream_batch, len(upstream)), replace=False)
        down = rng.choice(len(downstream), min(settings.downstream_batch, len(downstream)), replace=False)
        scores = scorer(upstream.features[up])
        loss, after, state = lookahead_loss(reference, params, scores, upstream.batch(up), downstream.batch(down),
                                            settings.reference_lr, settings.downstream_logit_scale, adam)
        grads = torch.autograd.grad(loss, list(scorer.parameters()))
        optimizer.zero_grad()
        for parameter, grad in zip(scorer.parameters(), grads):
            parameter.grad = grad
        optimizer.step()
        if settings.train_reference:
            params = {name: value.detach().requires_grad_(True) for name, value in after.items()}
            adam = state.detached() if state is not None else None
        history.losses.append(loss.item())
        if log and (step % 25 == 0 or step == settings.steps - 1):
            log(f"FLYT step {step}: downstream loss {loss.item():.4f} ({time.monotonic() - started:.0f} s)")
    scorer.eval()
    with torch.no_grad():
        for name, value in reference.named_parameters():
            value.copy_(params[name])
    history.seconds = time.monotonic() - started
    return history
