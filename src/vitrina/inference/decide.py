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
"""
from __future__ import annotations

from collections.abc import Sequence
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

    def verdict(self, probs: np.ndarray, scores: np.ndarray | None, declared: str, classes: Sequence[str]) -> Verdict:
        """Judge a listing from its photos' probabilities (N x classes) and unknown scores (N or None)."""
        mean = probs.mean(axis=0)
        best = int(np.argmax(mean))
        predicted, confidence = classes[best], float(mean[best])
        flags = self.unknown(None if scores is None or len(scores) == 0 else np.array([float(np.mean(scores))]))
        unknown = flags is not None and bool(flags[0])
        if unknown or (self.confidence is not None and confidence < self.confidence):
            return Verdict(predicted, confidence, "uncertain", None, unknown)
        if predicted == declared:
            return Verdict(predicted, confidence, "match", None)
        return Verdict(predicted, confidence, "mismatch", predicted)
