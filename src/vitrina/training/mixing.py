"""Mixup and CutMix (``augment.mixup``, ``augment.cutmix``): pairs of training photos blended, or a
box of one pasted into the other, with the loss shared between both labels by the mixed share."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MixedBatch:
    images: torch.Tensor
    labels: torch.Tensor  # the first photo's labels
    partner_labels: torch.Tensor  # the labels of the photo mixed in
    share: float  # of the first photo in the mix (1 = unmixed)


class BatchMix:
    """Mixes each batch with itself in reverse order: mixup with weight ~ Beta(mixup, mixup), CutMix
    with a box of area ~ Beta(cutmix, cutmix); with both on, each batch takes one at even odds.
    Uses torch's global generator (the epoch loop seeds it per epoch)."""

    def __init__(self, mixup: float, cutmix: float):
        self.mixup, self.cutmix = mixup, cutmix

    @staticmethod
    def build(mixup: float, cutmix: float) -> "BatchMix | None":
        return BatchMix(mixup, cutmix) if mixup > 0 or cutmix > 0 else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> MixedBatch:
        """``images``: a normalised NxCxHxW float batch."""
        partner = labels.flip(0)
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or torch.rand(()) < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        share = float(torch.distributions.Beta(alpha, alpha).sample())
        if not use_cutmix:
            return MixedBatch(images.lerp(images.flip(0), 1.0 - share), labels, partner, share)
        return self._cut(images, labels, partner, share)

    @staticmethod
    def _cut(images: torch.Tensor, labels: torch.Tensor, partner: torch.Tensor, share: float) -> MixedBatch:
        h, w = images.shape[-2:]
        side = (1.0 - share) ** 0.5
        bh, bw = int(h * side), int(w * side)
        top = int(torch.randint(0, h - bh + 1, ()))
        left = int(torch.randint(0, w - bw + 1, ()))
        mixed = images.clone()
        mixed[..., top : top + bh, left : left + bw] = images.flip(0)[..., top : top + bh, left : left + bw]
        return MixedBatch(mixed, labels, partner, 1.0 - bh * bw / (h * w))  # the box as cut, not as drawn


def mixed_cross_entropy(logits: torch.Tensor, batch: MixedBatch, weight: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy against both labels of each mixed photo, weighted by their shares."""
    first = F.cross_entropy(logits, batch.labels, weight=weight, label_smoothing=label_smoothing)
    if batch.share >= 1.0:
        return first
    second = F.cross_entropy(logits, batch.partner_labels, weight=weight, label_smoothing=label_smoothing)
    return batch.share * first + (1.0 - batch.share) * second
