"""Out-of-sample probabilities and confident learning on features with planted wrong labels."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import features_of_clusters
from vitrina.quality.mislabels import label_issues, neighbour_probabilities, usable_folds
from vitrina.quality.neighbours import group_pairs, scan_pairs


def flipped(labels: np.ndarray, share: float, classes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(labels), size=int(share * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[rows] = (labels[rows] + rng.integers(1, classes, size=len(rows))) % classes
    return noisy, rows


def test_flipped_labels_are_flagged_with_the_true_label_suggested() -> None:
    features, labels = features_of_clusters()
    noisy, rows = flipped(labels, 0.05, 4)
    scan = scan_pairs(features, np.arange(len(labels), dtype=np.uint64) * np.uint64(2**40 + 12345), np.arange(len(labels)), k=10)
    issues = label_issues(features, noisy, 4, scan.knn_index, scan.knn_similarity, folds=5)
    flagged = set(np.flatnonzero(issues.flagged).tolist())
    assert set(rows.tolist()) <= flagged
    assert len(flagged) <= len(rows) + 3
    assert np.array_equal(issues.suggested[rows], labels[rows])
    assert issues.quality[rows].max() < issues.quality[np.setdiff1d(np.arange(len(labels)), rows)].min() + 0.2
    assert issues.accuracy > 0.9


def test_clean_labels_give_few_suspects_and_the_classifier_alone_works() -> None:
    features, labels = features_of_clusters(seed=2)
    issues = label_issues(features, labels, 4, folds=3)
    assert issues.folds == 3 and issues.flagged.sum() <= 2
    assert issues.probabilities.shape == (len(labels), 4)
    assert np.allclose(issues.probabilities.sum(axis=1), 1.0)


def test_neighbour_votes() -> None:
    labels = np.array([0, 0, 1, 1])
    index = np.array([[1, 2], [0, 3], [3, 0], [2, -1]])
    sims = np.array([[0.9, 0.1], [0.9, 0.2], [0.8, 0.1], [0.8, np.nan]], dtype=np.float32)
    probs = neighbour_probabilities(labels, 2, index, sims)
    assert probs.argmax(axis=1).tolist() == [0, 0, 1, 1]
    assert probs[3, 1] > 0.99


def test_folds_follow_the_rarest_class() -> None:
    assert usable_folds(np.array([0, 0, 0, 1, 1]), 5) == 2
    assert usable_folds(np.array([0, 1, 1]), 5) == 1
    with pytest.raises(ValueError):
        label_issues(np.zeros((3, 2), np.float32), np.array([0, 1, 1]), 2)


def test_near_duplicate_scan_and_groups() -> None:
    features, _ = features_of_clusters(n_per_class=10)
    hashes = np.random.default_rng(0).integers(0, 2**63, size=len(features), dtype=np.uint64)
    hashes[5] = hashes[3] ^ np.uint64(0b11)  # 2 bits apart: a near copy whatever the features
    features[7] = features[6]
    hashes[7] = hashes[6] ^ np.uint64(0xFFF)  # 12 bits apart, identical features: a near copy
    content = np.arange(len(features))
    content[9] = content[8]  # byte-identical: not a "near" pair, and not each other's neighbour
    scan = scan_pairs(features, hashes, content, k=3, strong_bits=4, loose_bits=16, min_similarity=0.95)
    pairs = set(zip(scan.pairs_i.tolist(), scan.pairs_j.tolist()))
    assert pairs == {(3, 5), (6, 7)}
    assert 9 not in scan.knn_index[8] and 5 not in scan.knn_index[3] and 8 not in scan.knn_index[8]
    assert (np.diff(scan.knn_similarity, axis=1) <= 0).all()
    assert group_pairs(len(features), np.array([3, 5, 20]), np.array([5, 11, 21])) == [[3, 5, 11], [20, 21]]
