"""FLYT's parts (assets/flyt/): the weighted CLIP loss against open_clip's own CLIP loss."""

import open_clip
import pytest
import torch

from assets.flyt.loss import weighted_clip_loss


def batch(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=1)
    text = torch.nn.functional.normalize(image + 0.5 * torch.randn(n, d, generator=generator), dim=1)
    return image, text


def test_with_uniform_weights_the_weighted_loss_is_the_plain_clip_loss():
    image, text = batch()
    scale = torch.tensor(14.3)
    plain = open_clip.ClipLoss()(image, text, scale)
    weighted = weighted_clip_loss(image, text, scale, torch.full((8,), 1 / 8))
    torch.testing.assert_close(weighted, plain)


def test_a_pair_of_weight_zero_drops_out_of_the_batch():
    """Its own term and its place among every other pair's negatives: the loss is the plain
    loss of the batch without it, the others weighted uniformly."""
    image, text = batch()
    weights = torch.full((8,), 1 / 7)
    weights[3] = 0
    keep = torch.tensor([i for i in range(8) if i != 3])
    plain = open_clip.ClipLoss()(image[keep], text[keep], 10.0)
    torch.testing.assert_close(weighted_clip_loss(image, text, 10.0, weights), plain)


def test_the_loss_is_differentiable_in_the_weights_and_the_embeddings():
    image, text = batch()
    scores = torch.zeros(8, requires_grad=True)
    image = image.clone().requires_grad_(True)
    weighted_clip_loss(image, text, 10.0, torch.softmax(scores, dim=0)).backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    assert image.grad is not None and torch.isfinite(image.grad).all()
    # Raising a well-matched pair's weight lowers the loss: its gradient is the most negative.
    image, text = batch()
    text = text.clone()
    text[5] = image[5]  # pair 5 now matches exactly
    scores = torch.zeros(8, requires_grad=True)
    weighted_clip_loss(image, text, 10.0, torch.softmax(scores, dim=0)).backward()
    assert int(torch.argmin(scores.grad)) == 5


def test_a_batch_that_does_not_line_up_is_refused():
    image, text = batch()
    with pytest.raises(ValueError, match="one batch"):
        weighted_clip_loss(image, text[:4], 10.0, torch.full((8,), 1 / 8))
