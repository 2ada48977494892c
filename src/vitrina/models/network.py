"""The network every registry model becomes: a backbone (image -> pooled features) and a head.

:class:`Backbone` is what a registry builder returns; :func:`make_head` builds the head that
turns features into logits; :class:`VitrinaNet` joins the two. Nothing here knows model names:
that is :mod:`vitrina.models.registry`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vitrina.errors import ModelError

HeadKind = Literal["linear", "mlp", "mlp_ensemble"]
ENSEMBLE_SIZE = 3  # MLPs in an "mlp_ensemble" head


class HeadEnsemble(nn.Module):
    """Heads of one kind trained side by side from different initial weights; their logits averaged.

    On frozen features a single MLP head's test accuracy moves by about 3 points with its random
    initialisation (freiburg split 0); the mean of three moves less and is about half a point higher.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [member(features) for member in self.members]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.member_logits(features)).mean(dim=0)


def make_head(
    num_features: int,
    num_classes: int,
    kind: HeadKind = "linear",
    hidden: int = 512,
    dropout: float = 0.2,
) -> nn.Module:
    """Features -> logits: dropout then a linear layer, a one-hidden-layer MLP, or an ensemble of MLPs."""
    if num_classes < 1:
        raise ModelError(f"a model needs at least one class, got num_classes={num_classes}")
    if kind == "mlp_ensemble":  # members half as wide: about the cost of two MLPs, for most of the gain of full ones
        return HeadEnsemble([make_head(num_features, num_classes, "mlp", max(1, hidden // 2), dropout) for _ in range(ENSEMBLE_SIZE)])
    if kind == "linear":
        layers = [("drop", nn.Dropout(dropout)), ("fc", nn.Linear(num_features, num_classes))]
    elif kind == "mlp":
        layers = [
            ("fc1", nn.Linear(num_features, hidden)),
            ("act", nn.ReLU(inplace=True)),
            ("drop", nn.Dropout(dropout)),
            ("fc", nn.Linear(hidden, num_classes)),
        ]
    else:
        raise ModelError(f"unknown head {kind!r} (choose linear, mlp or mlp_ensemble)")
    return nn.Sequential(OrderedDict(layers))


def output_layers(head: nn.Module) -> list[nn.Linear]:
    """The linear layers whose outputs form the head's logits: one per member of an ensemble.

    The logits are linear in these layers' weights and biases, so scaling all of them scales the
    logits (the ensemble's mean included) by the same factor.
    """
    if isinstance(head, HeadEnsemble):
        return [layer for member in head.members for layer in output_layers(member)]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"the head {type(head).__name__} has no linear layer to scale")
    return [linears[-1]]


class VitrinaNet(nn.Module):
    """``backbone`` (image -> pooled features) followed by ``head`` (features -> logits).

    A trained network may also carry a ``vote`` (:class:`~vitrina.models.neighbours.NeighbourVote`):
    then :meth:`forward_head` returns the log of the head's softmax mixed with its nearest
    training photos' vote (still "logits": their softmax is the mixed probabilities), and
    :meth:`head_logits` the head's own logits. With ``flip_average`` (chosen in training when it
    helps on the validation split) :meth:`forward` averages the probabilities of each image and
    its mirror image.

    ``block_names`` lists the backbone's stages from input to output, each as the names of the
    backbone submodules that form it; :meth:`blocks` resolves them (fine-tuning unfreezes the
    last N).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_features: int,
        num_classes: int,
        in_channels: int,
        block_names: Sequence[Sequence[str]],
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.block_names = [list(names) for names in block_names]
        self.vote: nn.Module | None = None
        self.flip_average = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> pooled features (N, num_features)."""
        return self.backbone(x)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features) -> the head's logits (N, num_classes), without the vote."""
        return self.head(features)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features) -> logits (N, num_classes), the neighbour vote included."""
        logits = self.head(features)
        if self.vote is None:
            return logits
        return torch.log(self.vote(features, logits).clamp_min(1e-12))

    def classify(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features -> (class probabilities, the head's own logits) in one pass."""
        logits = self.head(features)
        probs = torch.softmax(logits.float(), dim=1) if self.vote is None else self.vote(features, logits)
        return probs, logits

    def classify_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images -> (class probabilities, pooled features and head logits of the images as given)."""
        features = self.backbone(x)
        probs, logits = self.classify(features)
        if self.flip_average:
            probs = (probs + self.classify(self.backbone(torch.flip(x, dims=[3])))[0]) / 2
        return probs, features, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip_average:
            return self.forward_head(self.backbone(x))
        return torch.log(self.classify_images(x)[0].clamp_min(1e-12))

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages, input to output (a multi-module stage is a ModuleList)."""
        stages: list[nn.Module] = []
        for names in self.block_names:
            modules = [self.backbone.get_submodule(name) for name in names]
            stages.append(modules[0] if len(modules) == 1 else nn.ModuleList(modules))
        return stages


@dataclass(frozen=True)
class Backbone:
    """What a registry builder returns: ``module`` (images -> pooled features of size
    ``num_features``) and its stages, input to output, as submodule names (see :class:`VitrinaNet`)."""

    module: nn.Module
    num_features: int
    block_names: list[list[str]]


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class DropPath(nn.Module):
    """Stochastic depth: in training, drops a residual branch for a whole sample with probability
    ``rate`` (the kept ones scaled by 1 / (1 - rate)); the identity at inference."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


def set_drop_path(model: nn.Module, rate: float) -> int:
    """Stochastic depth for the residual blocks that train (submodules with a ``drop_path`` branch,
    timm's convention) at ``rate`` x block index / number of blocks, timm's ``drop_path_rate`` rule;
    frozen blocks keep the identity, so they stay a fixed function. Inference is unchanged.
    Returns how many blocks drop (0: none that train)."""
    blocks = [module for module in model.modules() if isinstance(getattr(module, "drop_path", None), nn.Module)]
    dropping = 0
    for index, block in enumerate(blocks):
        trains = any(p.requires_grad for p in block.parameters())
        residual = getattr(block, "has_skip", True)  # timm's EfficientNet blocks without a shortcut never drop
        block_rate = rate * index / len(blocks) if trains and residual else 0.0
        block.drop_path = DropPath(block_rate).train(block.training) if block_rate > 0 else nn.Identity()
        dropping += block_rate > 0
    return dropping
