"""Off-topic photos: far from every other photo in feature space, ranked together with how atypical
their ImageNet concepts are of their class (a moped among phones); flagged on the distance alone."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitrina.quality.neighbours import PairScan


@dataclass
class OffTopic:
    """Per image: the off-topic figures (nan where not computed) and the flag."""

    distance: np.ndarray  # mean cosine distance to the nearest other photos
    outlier_z: np.ndarray  # the ranking score: robust z of the distance (plus the concepts' z, standardised again)
    concept_z: np.ndarray  # robust z of how atypical the photo's ImageNet concepts are of its class
    flagged: np.ndarray  # bool: the distance's robust z reaches the threshold
    note: str | None  # why nothing was computed, if so


def find_off_topic(
    scan: PairScan, labels: np.ndarray, concept_parts: list[np.ndarray], neighbours: int, threshold: float
) -> OffTopic:
    """Score every image from its ``neighbours`` nearest others and, if given, its backbones' ImageNet concepts."""
    n = len(labels)
    distance = np.full(n, np.nan)
    outlier_z = np.full(n, np.nan)
    concept_z = np.full(n, np.nan)
    if n <= neighbours + 1:
        note = f"off-topic detection needs more than {neighbours + 1} readable images"
        return OffTopic(distance, outlier_z, concept_z, np.zeros(n, dtype=bool), note)
    valid = scan.knn_index >= 0
    distance = 1.0 - np.where(valid, scan.knn_similarity, np.nan)
    distance = np.nanmean(distance, axis=1)
    outlier_z = robust_z(distance)
    flagged = outlier_z >= threshold
    if concept_parts:
        concept_z = robust_z(-concept_typicality(sum(concept_parts) / len(concept_parts), labels))
        # The combined score ranks the photos to review; flagging (and exclude.csv) stays with
        # the distance alone, which flags fewer real products on small datasets.
        outlier_z = robust_z(outlier_z + concept_z)
    return OffTopic(distance, outlier_z, concept_z, flagged, None)


def concept_typicality(concepts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log of the probability that a photo's ImageNet concepts match its class's concept profile
    (the mean concept distribution of the class's other photos; all photos for a class of one)."""
    typicality = np.zeros(len(labels))
    overall = concepts.mean(axis=0)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        total = concepts[rows].sum(axis=0)
        profile = (total[None, :] - concepts[rows]) / (len(rows) - 1) if len(rows) > 1 else overall[None, :]
        typicality[rows] = np.log(np.maximum((concepts[rows] * profile).sum(axis=1), 1e-30))
    return typicality


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 x median absolute deviation): a z-score that outliers do not inflate."""
    median = np.median(values)
    mad = np.median(np.abs(values - median)) * 1.4826
    return (values - median) / max(mad, 1e-9)
