"""The one decision rule: from probabilities and unknown-photo scores to flags and verdicts.

`vitrina predict`, `vitrina evaluate`, the server's ``/v1/predict`` and ``/v1/check`` and the web
page all decide with :class:`DecisionRule`, so the same photo gets the same flags everywhere:

- ``unknown``: the photo's unknown-photo score is above the model's threshold (it looks unlike
  every training photo; only for models with a detector whose score the backend computes);
- ``uncertain``: the top probability is below the model's confidence threshold, or the photo
  is unknown: the prediction should not be trusted without a person looking;
- a listing's verdict (its photos' mean probabilities decide): ``uncertain`` as above on the
  mean (the mean unknown score for unknown), else ``match`` when the likeliest class is the
  declared one, else ``mismatch`` with that class suggested.

With a taxonomy (a model trained with coarse labels: ``coarse_of`` maps each class to its
parent), a listing may be declared at either level. Declared at the coarse level, it is judged on
the coarse probabilities (each parent's children summed): a Granny Smith filed under "apples" is
a match. A suggestion is given at the deepest level the model is sure of: the class when its
probability clears the confidence threshold, else its parent when that one does. Declared at
the fine level, a listing the model is unsure of at that level is still a mismatch when the
parent it is sure of is another.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vitrina.description import ModelDescription

VERDICTS = ("match", "mismatch", "uncertain")


@dataclass(frozen=True)
class Verdict:
    """A listing's verdict: the likeliest class of its photos' mean, and what that says of the declared class."""

    predicted: str
    confidence: float
    verdict: str  # match | mismatch | uncertain
    suggestion: str | None
    unknown: bool = False
    declared_level: str = "fine"  # the level the declared category is at: fine | coarse
    suggestion_level: str | None = None  # fine | coarse, with a suggestion


def top_k(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and probabilities of the ``k`` likeliest classes per row, likeliest first."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


@dataclass(frozen=True)
class DecisionRule:
    """Thresholds that turn probabilities and unknown scores into flags.

    ``confidence``: below it a top probability is too low (None: never); ``unknown_threshold``:
    above it a photo is unknown (None: the model has no detector, or the scores are not computed).
    """

    confidence: float | None = None
    unknown_threshold: float | None = None

    @classmethod
    def for_model(cls, description: ModelDescription, *, detects_unknown: bool, confidence: float | None = None) -> "DecisionRule":
        """The model's own rule; ``confidence`` overrides its calibrated threshold (a server setting)."""
        unknown = description.unknown.threshold if description.unknown is not None and detects_unknown else None
        return cls(confidence if confidence is not None else description.confidence_threshold, unknown)

    @property
    def flags_uncertain(self) -> bool:
        """Whether this rule can mark anything uncertain (else predictions carry no such flag)."""
        return self.confidence is not None or self.unknown_threshold is not None

    def unknown(self, scores: np.ndarray | None) -> np.ndarray | None:
        """Per row, whether the photo looks unlike the training photos (None: no detector or no scores)."""
        if scores is None or self.unknown_threshold is None:
            return None
        return np.asarray(scores, dtype=np.float64) > self.unknown_threshold

    def uncertain(self, probs: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray | None:
        """Per row: low confidence, or unknown (None when the rule has no threshold at all)."""
        if not self.flags_uncertain:
            return None
        flags = np.zeros(len(probs), dtype=bool)
        if self.confidence is not None and len(probs):
            flags |= probs.max(axis=1) < self.confidence
        unknown = self.unknown(scores)
        return flags if unknown is None else flags | unknown

    def sure(self, probability: float) -> bool:
        return self.confidence is None or probability >= self.confidence

    def verdict(self, probs: np.ndarray, scores: np.ndarray | None, declared: str, classes: Sequence[str],
                coarse_of: Mapping[str, str] | None = None) -> Verdict:
        """Judge a listing from its photos' probabilities (N x classes) and unknown scores (N or None);
        ``coarse_of``: each class's parent, when the model knows a taxonomy."""
        mean = probs.mean(axis=0)
        best = int(np.argmax(mean))
        predicted, confidence = classes[best], float(mean[best])
        flags = self.unknown(None if scores is None or len(scores) == 0 else np.array([float(np.mean(scores))]))
        if flags is not None and bool(flags[0]):
            return Verdict(predicted, confidence, "uncertain", None, True)
        coarse_of = coarse_of or {}
        if declared not in classes and declared in coarse_of.values():
            return self._coarse_verdict(mean, declared, classes, coarse_of)
        if not self.sure(confidence):
            parent, parent_probability = _likeliest_parent(mean, classes, coarse_of)
            if parent is not None and self.sure(parent_probability) and parent != coarse_of.get(declared):
                return Verdict(predicted, confidence, "mismatch", parent, suggestion_level="coarse")
            return Verdict(predicted, confidence, "uncertain", None)
        if predicted == declared:
            return Verdict(predicted, confidence, "match", None)
        return Verdict(predicted, confidence, "mismatch", predicted, suggestion_level="fine")

    def _coarse_verdict(self, mean: np.ndarray, declared: str, classes: Sequence[str], coarse_of: Mapping[str, str]) -> Verdict:
        """A listing declared at the coarse level: judged on the parents' summed probabilities."""
        parent, probability = _likeliest_parent(mean, classes, coarse_of)
        assert parent is not None
        if not self.sure(probability):
            return Verdict(parent, probability, "uncertain", None, declared_level="coarse")
        if parent == declared:
            return Verdict(parent, probability, "match", None, declared_level="coarse")
        child = max((i for i, name in enumerate(classes) if coarse_of.get(name) == parent), key=lambda i: mean[i])
        if self.sure(float(mean[child])):  # sure of a class under that parent: the deepest suggestion
            return Verdict(parent, probability, "mismatch", classes[child], declared_level="coarse", suggestion_level="fine")
        return Verdict(parent, probability, "mismatch", parent, declared_level="coarse", suggestion_level="coarse")


def _likeliest_parent(mean: np.ndarray, classes: Sequence[str], coarse_of: Mapping[str, str]) -> tuple[str | None, float]:
    """The parent with the largest summed probability of its children, and that sum (None without a taxonomy)."""
    totals: dict[str, float] = {}
    for name, probability in zip(classes, mean):
        parent = coarse_of.get(name)
        if parent is not None:
            totals[parent] = totals.get(parent, 0.0) + float(probability)
    if not totals:
        return None, 0.0
    parent = max(totals, key=lambda name: totals[name])
    return parent, totals[parent]
