"""FLYT's training signal: how a reference CLIP's downstream loss changes when the scorer
reweights the upstream batch it trains on (Shechter & Carmon, 2025).

One step, differentiable in the scores:

    w  = softmax(scores)                                    over the upstream batch
    g  = ∇θ weighted_clip_loss(θ; upstream, w)              (kept as a graph)
    θ' = θ - lr * step(g)                                   AdamW as FLYT, or plain gradient descent
    L  = zero-shot cross-entropy of the model at θ' on a labelled downstream batch

dL/dscores reaches the scorer through θ'. FLYT's inner step is AdamW (betas 0.9/0.98, eps
1e-6, weight decay 0.2 except gains, biases and logit_scale) with its moments carried,
detached, from step to step: on a first step Adam moves by about g/|g|, nearly flat in the
weights, so the meta-gradient flows through the moments' history. A plain gradient step
(`AdamState=None`) keeps the signal direct; the finite-difference test checks both. The model
runs through `torch.func.functional_call` with θ as a dict, so no module is modified in
place, and attention runs on PyTorch's math kernel: the fused CPU kernels have no second
derivative.
"""

from dataclasses import dataclass

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from assets.flyt.loss import weighted_clip_loss

# FLYT's downstream logit scale (log of about 14.3): zero-shot logits softer than CLIP's 100.
DOWNSTREAM_LOGIT_SCALE = 2.65926

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class UpstreamBatch:
    """Pairs the reference trains on: preprocessed images (n, 3, h, w), caption tokens (n, ctx)."""
    images: torch.Tensor
    tokens: torch.Tensor


@dataclass(frozen=True)
class DownstreamBatch:
    """Labelled images (m, 3, h, w) with labels (m,), and every class's prompts as tokens
    (classes * templates, ctx), class by class."""
    images: torch.Tensor
    labels: torch.Tensor
    prompt_tokens: torch.Tensor
    templates: int


def parameters_of(model: torch.nn.Module) -> Params:
    """The model's parameters as detached leaves that track gradients: θ for one step."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}


def upstream_loss(model: torch.nn.Module, params: Params, batch: UpstreamBatch, weights: torch.Tensor) -> torch.Tensor:
    image, text, logit_scale = functional_call(model, params, (batch.images, batch.tokens))[:3]
    return weighted_clip_loss(image, text, logit_scale, weights)


def downstream_loss(model: torch.nn.Module, params: Params, batch: DownstreamBatch,
                    logit_scale: float = DOWNSTREAM_LOGIT_SCALE) -> torch.Tensor:
    """Zero-shot classification cross-entropy: each class's embedding is the normalized mean
    of its prompts' text embeddings."""
    image = functional_call(model, params, (batch.images, None))[0]
    prompts = functional_call(model, params, (None, batch.prompt_tokens))[1]
    classes = prompts.reshape(-1, batch.templates, prompts.shape[-1]).mean(dim=1)
    classes = torch.nn.functional.normalize(classes, dim=-1)
    logits = torch.exp(torch.as_tensor(logit_scale)) * image @ classes.T
    return torch.nn.functional.cross_entropy(logits, batch.labels)


@dataclass(frozen=True)
class AdamState:
    """AdamW's moments after `steps` steps (detached), and its settings (FLYT's values)."""
    steps: int
    first: Params
    second: Params
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2

    @classmethod
    def start(cls, params: Params) -> "AdamState":
        return cls(0, {n: torch.zeros_like(p) for n, p in params.items()},
                   {n: torch.zeros_like(p) for n, p in params.items()})

    def detached(self) -> "AdamState":
        return AdamState(self.steps, {n: m.detach() for n, m in self.first.items()},
                         {n: v.detach() for n, v in self.second.items()}, self.betas, self.eps, self.weight_decay)


def _decays(name: str, param: torch.Tensor) -> bool:
    """open_clip's rule: no weight decay on gains, biases and the logit scale."""
    return param.ndim >= 2 and "bias" not in name and "logit_scale" not in name


def stepped(model: torch.nn.Module, params: Params, upstream: UpstreamBatch, weights: torch.Tensor,
            lr: float, adam: AdamState | None = None) -> tuple[Params, AdamState | None]:
    """θ' after one step on the weighted upstream loss, differentiable in `weights`, and the
    AdamW state after it (None for a plain gradient step)."""
    loss = upstream_loss(model, params, upstream, weights)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]
    if adam is None:
        return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}, None
    (beta1, beta2), t = adam.betas, adam.steps + 1
    after, first, second = {}, {}, {}
    for (name, p), g in zip(params.items(), grads):
        first[name] = beta1 * adam.first[name] + (1 - beta1) * g
        second[name] = beta2 * adam.second[name] + (1 - beta2) * g * g
        # sqrt(v + eps^2) in place of sqrt(v): equal but where v = 0 (a token never seen), whose
        # derivative would be infinite.
        denominator = torch.sqrt(second[name] / (1 - beta2 ** t) + adam.eps ** 2) + adam.eps
        update = first[name] / (1 - beta1 ** t) / denominator
        if _decays(name, p):
            update = update + adam.weight_decay * p
        after[name] = p - lr * update
    return after, AdamState(t, first, second, adam.betas, adam.eps, adam.weight_decay)


def lookahead_loss(model: torch.nn.Module, params: Params, scores: torch.Tensor, upstream: UpstreamBatch,
                   downstream: DownstreamBatch, lr: float, logit_scale: float = DOWNSTREAM_LOGIT_SCALE,
                   adam: AdamState | None = None) -> tuple[torch.Tensor, Params, AdamState | None]:
    """The downstream loss after one step on the upstream batch weighted by softmax(scores),
    the stepped parameters and AdamW state (still in the graph: detach them to keep them)."""
    with sdpa_kernel(SDPBackend.MATH):
        after, state = stepped(model, params, upstream, torch.softmax(scores, dim=0), lr, adam)
        return downstream_loss(model, after, downstream, logit_scale), after, state
