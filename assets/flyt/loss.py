"""The weighted CLIP loss FLYT trains through: each pair of a batch carries a weight (the
softmax of its score over the batch), on its own term and on its place among the negatives.

For the image-to-text direction, pair i's term is

    log p_i = log w_i + s_ii - logsumexp_j(log w_j + s_ij),    s = logit_scale * image . text

and the loss is -sum_i w_i log p_i, averaged with the text-to-image direction (FLYT's
NegativeWeightedClipLoss). A pair of weight 0 drops out of both its own term and every other
pair's negatives; with uniform weights (1/n each) this is the plain CLIP loss (the mean
cross-entropy over both directions). Written in log space: weights that the softmax makes
tiny stay finite.
"""

import torch


def weighted_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
                       weights: torch.Tensor) -> torch.Tensor:
    """The loss of a batch of normalized (n, d) image and text embeddings, row i a pair, with
    `weights` (n,) summing to 1 (differentiable in all of them)."""
    if image.shape != text.shape or weights.shape != (image.shape[0],):
        raise ValueError(f"image {tuple(image.shape)}, text {tuple(text.shape)} and weights "
                         f"{tuple(weights.shape)} do not describe one batch")
    logits = logit_scale * image @ text.T
    log_weights = torch.log(weights)
    diagonal = torch.arange(len(weights), device=image.device)

    def direction(scores: torch.Tensor) -> torch.Tensor:
        log_p = log_weights + scores[diagonal, diagonal] - torch.logsumexp(log_weights[None, :] + scores, dim=1)
        present = weights > 0  # 0 * -inf would be nan: an absent pair adds nothing
        return -(weights[present] * log_p[present]).sum()

    return (direction(logits) + direction(logits.T)) / 2
