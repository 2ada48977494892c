"""Likely wrong labels: out-of-sample probabilities on frozen features, then confident learning.

Every image gets class probabilities from models that never saw its label: the mean of

- a multinomial logistic regression on the frozen backbone features, fitted K times on
  stratified folds, each time predicting the fold it left out
  (:func:`out_of_sample_probabilities`), and
- a vote of the image's nearest neighbours in feature space (its own copies left out), weighted
  by similarity (:func:`neighbour_probabilities`).

The two err differently (a linear boundary against local structure), and their mean is both
more accurate and better at finding flipped labels than either (freiburg split 0 with 5% of the
training labels flipped: 88% out-of-sample accuracy against 80% and 85%, bench/bench_clean.py).
:func:`label_issues` hands the probabilities to cleanlab: confident learning (per-class
thresholds estimate the joint distribution of given and true labels) says how many labels are
wrong, and that many images with the lowest probability of their given label are flagged, each
with the likeliest other label as suggestion.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Inverse L2 strength of the fold classifiers on L2-normalised features (measured on freiburg
# split 0 with flipped labels, bench/bench_clean.py).
DEFAULT_C = 10.0
NEIGHBOUR_TEMPERATURE = 0.02  # softmax temperature of the neighbours' cosine similarities
TOO_FEW_IMAGES = "wrong-label detection needs at least 2 classes with at least 2 readable images each"


@dataclass
class LabelIssues:
    """Per image: out-of-sample probabilities, given-label quality, flag and suggested label."""

    probabilities: np.ndarray  # N x classes, out of sample
    quality: np.ndarray  # N, probability of the given label (self-confidence), low = suspicious
    flagged: np.ndarray  # N bool: confident learning calls the given label wrong
    suggested: np.ndarray  # N class index: the likeliest label other than the given one
    folds: int
    accuracy: float  # out-of-sample accuracy against the given labels


def usable_folds(labels: np.ndarray, wanted: int) -> int:
    """As many folds as the rarest class allows (each fold needs one image of every class), at most ``wanted``."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    return int(min(wanted, counts.min())) if len(counts) else 0


def out_of_sample_probabilities(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5, c: float = DEFAULT_C, seed: int = 0
) -> np.ndarray:
    """N x classes probabilities, each row from a classifier fitted without that image's fold."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(features, labels):
        model = LogisticRegression(C=c, max_iter=300, tol=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held_rows, model.classes_)] = model.predict_proba(features[held_rows])
    return probs


def neighbour_probabilities(
    labels: np.ndarray, num_classes: int, knn_index: np.ndarray, knn_similarity: np.ndarray,
    temperature: float = NEIGHBOUR_TEMPERATURE,
) -> np.ndarray:
    """N x classes: each image's neighbours' labels, weighted by softmax(similarity / temperature).

    ``knn_index`` (-1 for none) must leave out the image itself and its copies.
    """
    n = len(labels)
    valid = knn_index >= 0
    sims = np.where(valid, knn_similarity, -np.inf).astype(np.float64)
    top = np.max(sims, axis=1, keepdims=True) if sims.size else np.zeros((n, 1))
    weights = np.where(valid, np.exp((sims - np.where(np.isfinite(top), top, 0.0)) / temperature), 0.0)
    probs = np.zeros((n, num_classes), dtype=np.float64)
    rows = np.repeat(np.arange(n), knn_index.shape[1]) if knn_index.size else np.zeros(0, np.int64)
    neighbour_labels = labels[np.where(valid, knn_index, 0)].ravel()
    np.add.at(probs, (rows, neighbour_labels), weights.ravel())
    probs += 1e-3  # no neighbour vote is ever a certainty
    return probs / probs.sum(axis=1, keepdims=True)


def label_issues(
    features: np.ndarray, labels: np.ndarray, num_classes: int, knn_index: np.ndarray | None = None,
    knn_similarity: np.ndarray | None = None, folds: int = 5, c: float = DEFAULT_C, seed: int = 0,
) -> LabelIssues:
    """Flag likely wrong labels with cleanlab on out-of-sample probabilities (see the module doc).

    Without neighbours (``knn_index`` None) only the cross-validated classifier is used.
    """
    from cleanlab.filter import find_label_issues

    folds = usable_folds(labels, folds)
    if folds < 2:
        raise ValueError("every class needs at least 2 images to cross-validate")
    probs = out_of_sample_probabilities(features, labels, num_classes, folds, c, seed)
    if knn_index is not None and knn_similarity is not None and knn_index.shape[1] > 0:
        probs = (probs + neighbour_probabilities(labels, num_classes, knn_index, knn_similarity)) / 2.0
    rows = np.arange(len(labels))
    quality = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -1.0
    suggested = others.argmax(axis=1)
    present = np.unique(labels)
    # cleanlab wants every class index present; restrict to the classes that have images.
    remap = np.full(num_classes, -1)
    remap[present] = np.arange(len(present))
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = find_label_issues(remap[labels], sub, filter_by="low_self_confidence", n_jobs=1)
    accuracy = float((probs.argmax(axis=1) == labels).mean())
    return LabelIssues(probs, quality, np.asarray(flagged, dtype=bool), suggested, folds, accuracy)


def wrong_labels(
    features: np.ndarray, labels: np.ndarray, num_classes: int, knn_index: np.ndarray, knn_similarity: np.ndarray,
    folds: int, c: float, seed: int,
) -> tuple[LabelIssues | None, str | None]:
    """:func:`label_issues` where the labels allow cross-validation, else None and why not."""
    if len(labels) and len(np.unique(labels)) >= 2 and usable_folds(labels, folds) >= 2:
        return label_issues(features, labels, num_classes, knn_index, knn_similarity, folds, c, seed), None
    return None, TOO_FEW_IMAGES
