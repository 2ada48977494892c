"""The JSON answers of the prediction and listing-check endpoints, built from the model's outputs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vitrina.inference.decide import DecisionRule, Verdict
from vitrina.serving.uploads import Photo

# Labels listed per photo of a listing check (the verdict itself rests on the listing's mean).
CHECK_TOP_K = 3
# Categories a logged check keeps for its review.
LOGGED_TOP_K = 5


def _ranked(probs: np.ndarray, classes: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    return [{"label": classes[i], "probability": round(float(probs[i]), 6)} for i in order]


def photo_result(filename: str, photo: Photo, probs: np.ndarray, classes: Sequence[str], top_k: int, rule: DecisionRule,
                 score: float | None = None) -> dict[str, Any]:
    """One photo's answer: its best label, confidence, the rule's flags, unknown-photo score and top-k."""
    best = int(np.argmax(probs))
    scores = None if score is None else np.array([score])
    uncertain = rule.uncertain(probs[None], scores)
    result = {
        "filename": filename,
        "sha256": photo.sha256,
        "predicted": classes[best],
        "confidence": round(float(probs[best]), 6),
        "uncertain": bool(uncertain[0]) if uncertain is not None else False,
        "top": _ranked(probs, classes, top_k),
    }
    unknown = rule.unknown(scores)
    if unknown is not None and score is not None:
        result["unknown"] = bool(unknown[0])
        result["unknown_score"] = round(float(score), 6)
    return result


def photo_results(filenames: Sequence[str], photos: Sequence[Photo], probs: np.ndarray, scores: np.ndarray | None,
                  classes: Sequence[str], top_k: int, rule: DecisionRule) -> list[dict[str, Any]]:
    """The answers of several photos (``probs`` and ``scores`` have one row each)."""
    per_score = scores if scores is not None else [None] * len(photos)
    return [
        photo_result(filename, photo, row, classes, top_k, rule, score)
        for filename, photo, row, score in zip(filenames, photos, probs, per_score)
    ]


def check_answer(check_id: int, model_version: str, declared: str, verdict: Verdict, rule: DecisionRule,
                 photos: list[dict[str, Any]]) -> dict[str, Any]:
    """A listing check's answer: the verdict on the declared category, with each photo's answer."""
    return {
        "check_id": check_id,
        "model_version": model_version,
        "declared": declared,
        "predicted": verdict.predicted,
        "confidence": round(verdict.confidence, 6),
        "threshold": rule.confidence,
        **({"unknown": verdict.unknown, "unknown_threshold": rule.unknown_threshold} if rule.unknown_threshold is not None else {}),
        "verdict": verdict.verdict,
        "suggestion": verdict.suggestion,
        "declared_level": verdict.declared_level,
        "suggestion_level": verdict.suggestion_level,
        "photos": photos,
    }


def review_context(probs: np.ndarray, scores: np.ndarray | None, classes: Sequence[str], top_k: int = LOGGED_TOP_K) -> dict[str, Any]:
    """What the log keeps for a review: the listing's likeliest categories (its photos' mean), the
    margin between the first two, and the mean unknown-photo score."""
    mean = probs.mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    top = [{"label": classes[i], "prob": round(float(mean[i]), 6)} for i in order[:top_k]]
    margin = float(mean[order[0]] - mean[order[1]]) if len(order) > 1 else 1.0
    unknown = None if scores is None or len(scores) == 0 else round(float(np.mean(scores)), 6)
    return {"top": top, "margin": round(margin, 6), "unknown_score": unknown}
