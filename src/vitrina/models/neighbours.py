"""Neighbour vote: the classifier's probabilities mixed with a vote of the nearest training photos.

A trained network's penultimate features place a photo near the training photos it resembles.
When a catalogue holds several shots of one product (a shelf photographed twice, the same phone
from two sides, one listing's photos), the nearest training photo often settles what the head
alone gets wrong. :class:`NeighbourVote` keeps the training photos' features (centred on their
mean, L2-normalised) with their labels and returns

    p = (1 - weight) * softmax(logits) + weight * vote,

where ``vote`` is the labels of the ``k`` most cosine-similar training photos, weighted by
softmax(similarity / temperature). This is the kNN-augmented classifier of Jia et al., 2021
("Rethinking nearest neighbors for visual classification"). :func:`fit_vote` picks ``k``,
``temperature`` and ``weight`` on the validation photos (weight 0, no vote, when it does not
help). Measured on freiburg split 0 (fine-tuned efficientnet_lite0 at 288 px): 87.7% -> 91.2% test.

The vote is a submodule of the network (``VitrinaNet.vote``), its bank a buffer saved with the
weights, so PyTorch, ONNX Runtime and the server all compute the same probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrina.description import NeighbourVote as VoteDescription
from vitrina.errors import ModelError

# Candidates tried on the validation photos (their product: 18 settings, plus no vote).
VOTE_KS = (5, 10, 20)
VOTE_TEMPERATURES = (0.05, 0.1)
VOTE_WEIGHTS = (0.25, 0.5, 0.75)
# How fit_vote ranks the settings that beat the head alone on validation.
VoteCriterion = Literal["accuracy", "log_loss"]


class NeighbourVote(nn.Module):
    """``(features, logits) -> class probabilities``: the head's softmax mixed with a kNN vote."""

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, temperature: float,
                 weight: float, centre: torch.Tensor | None = None):
        """``bank``: training features (N x D); with ``centre`` given, already centred and L2-normalised."""
        super().__init__()
        if bank.ndim != 2 or len(bank) == 0 or len(labels) != len(bank):
            raise ModelError("a neighbour vote needs a non-empty bank of features with one label each")
        if not 0.0 <= weight <= 1.0 or temperature <= 0 or k < 1:
            raise ModelError(f"neighbour vote: need 0 <= weight <= 1, temperature > 0, k >= 1 (got {weight}, {temperature}, {k})")
        bank = bank.float()
        if centre is None:
            centre = bank.mean(0)
            bank = F.normalize(bank - centre, dim=1)
        self.k, self.temperature, self.weight = min(int(k), len(bank)), float(temperature), float(weight)
        self.num_classes = int(num_classes)
        # fp16 bank: half the file; the similarities agree with fp32 to about 1e-3.
        self.register_buffer("bank", bank.half().contiguous())
        self.register_buffer("centre", centre.float().contiguous())
        self.register_buffer("labels", labels.long().contiguous())

    @classmethod
    def empty(cls, description: VoteDescription, num_features: int, num_classes: int) -> "NeighbourVote":
        """A vote of the described shape, to be filled by ``load_state_dict``."""
        d = description
        return cls(torch.zeros(d.bank_size, num_features), torch.zeros(d.bank_size, dtype=torch.long), num_classes,
                   d.k, d.temperature, d.weight, centre=torch.zeros(num_features))

    def with_added(self, features: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> tuple["NeighbourVote", int]:
        """The same vote with ``features`` (labelled ``labels``) appended to its bank, centred and
        normalised as the bank was (the vote's centre unchanged), up to ``limit`` photos in all (a
        seeded subset of the new ones beyond); returns it and how many photos it added."""
        room = max(0, limit - len(self.bank))
        rows = np.arange(len(features))
        if len(rows) > room:
            rows = np.sort(np.random.default_rng(seed).choice(len(rows), room, replace=False))
        added = torch.from_numpy(np.asarray(features, dtype=np.float32)[rows]).to(self.centre.device)
        added = F.normalize(added - self.centre, dim=1)
        new_labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)[rows]).to(self.labels.device)
        grown = NeighbourVote(torch.cat([self.bank.float(), added]), torch.cat([self.labels, new_labels]), self.num_classes,
                              self.k, self.temperature, self.weight, centre=self.centre)
        return grown.to(self.bank.device), len(rows)

    def without_last(self, n: int) -> "NeighbourVote":
        """The same vote without the bank's last ``n`` photos (where training appended the validation photos)."""
        if not 0 <= n < len(self.bank):
            raise ModelError(f"neighbour vote: cannot leave out {n} of its {len(self.bank)} photos")
        keep = len(self.bank) - n
        return NeighbourVote(self.bank[:keep], self.labels[:keep], self.num_classes, self.k, self.temperature, self.weight,
                             centre=self.centre).to(self.bank.device)

    def describe(self, validation_photos: int = 0) -> VoteDescription:
        """What ``model.json`` keeps under ``"neighbours"`` (``validation_photos``: of the bank, the run's validation photos)."""
        return VoteDescription(self.k, self.temperature, self.weight, int(len(self.bank)), validation_photos)

    def vote(self, features: torch.Tensor) -> torch.Tensor:
        """N x classes: the k nearest training photos' labels, weighted by softmax(similarity / temperature)."""
        centred = features.float() - self.centre
        # F.normalize written out, as in the unknown score (ONNX Runtime shape inference)
        sims = (centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ self.bank.float().T
        top, index = torch.topk(sims, self.k, dim=1)
        weights = torch.softmax(top / self.temperature, dim=1)
        onehot = F.one_hot(self.labels[index], self.num_classes).to(weights.dtype)  # N x k x classes
        return (weights.unsqueeze(2) * onehot).sum(dim=1)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        return (1.0 - self.weight) * probs + self.weight * self.vote(features)


@dataclass
class VoteChoice:
    """What :func:`fit_vote` tried and chose (``vote`` None: the head alone was best)."""

    vote: NeighbourVote | None
    val_accuracy_head: float
    val_accuracy: float
    tried: int


def _log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_vote(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, val_logits: np.ndarray,
             val_labels: np.ndarray, num_classes: int, criterion: VoteCriterion = "accuracy") -> VoteChoice:
    """Choose the neighbour vote's k, temperature and weight on the validation photos.

    ``train_features`` become the bank as given (training keeps at most MAX_BANK photos, as for
    the unknown score). Only settings that get more validation photos right than the head alone
    are candidates (none: no vote); of those, ``criterion`` "accuracy" takes the most photos
    right (then the lower log loss), "log_loss" the lowest log loss.
    """
    if criterion not in ("accuracy", "log_loss"):
        raise ModelError(f"neighbour vote: criterion must be 'accuracy' or 'log_loss' (got {criterion!r})")
    feats = np.asarray(train_features, dtype=np.float32)
    labels = np.asarray(train_labels, dtype=np.int64)
    head_probs = torch.softmax(torch.from_numpy(np.asarray(val_logits, dtype=np.float32)), dim=1).numpy()
    val_labels = np.asarray(val_labels, dtype=np.int64)
    head_correct = int((head_probs.argmax(1) == val_labels).sum())
    n_val = max(1, len(val_labels))
    if len(feats) == 0 or len(val_labels) == 0:
        return VoteChoice(None, head_correct / n_val, head_correct / n_val, 0)
    base = NeighbourVote(torch.from_numpy(feats), torch.from_numpy(labels), num_classes, 1, 1.0, 0.0)
    val_f = torch.from_numpy(np.asarray(val_features, dtype=np.float32))
    best: tuple[float, float] = (-np.inf, -np.inf)
    chosen: tuple[int, float, float, int] | None = None
    tried = 0
    with torch.inference_mode():
        for k in VOTE_KS:
            for temperature in VOTE_TEMPERATURES:
                base.k, base.temperature = min(k, len(feats)), temperature
                votes = torch.cat([base.vote(val_f[i : i + 1024]) for i in range(0, len(val_f), 1024)]).numpy()
                for weight in VOTE_WEIGHTS:
                    tried += 1
                    probs = (1.0 - weight) * head_probs + weight * votes
                    correct, loss = int((probs.argmax(1) == val_labels).sum()), _log_loss(probs, val_labels)
                    if correct <= head_correct:
                        continue
                    score = (correct, -loss) if criterion == "accuracy" else (-loss, correct)
                    if score > best:
                        best, chosen = score, (k, temperature, weight, correct)
    if chosen is None:
        return VoteChoice(None, head_correct / n_val, head_correct / n_val, tried)
    k, temperature, weight, correct = chosen
    vote = NeighbourVote(base.bank.float(), base.labels, num_classes, k, temperature, weight, centre=base.centre)
    return VoteChoice(vote, head_correct / n_val, correct / n_val, tried)
