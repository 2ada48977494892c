"""Duplicate groups: byte-identical files, and near duplicates found by perceptual hash, feature
similarity and pixel alignment; a group that spans splits is leakage."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitrina.quality.backbones import Item
from vitrina.data.hashing import aligned_similarity, phash
from vitrina.quality.neighbours import PairScan, group_pairs, scan_pairs
from vitrina.quality.settings import CleanSettings


@dataclass
class Duplicates:
    """The duplicate groups and the pair scan that found them (its nearest neighbours serve the other checks)."""

    content: np.ndarray  # N content ids, equal for byte-identical files
    scan: PairScan
    groups: list[list[int]]  # indices of the images of each group


def find_duplicates(features: np.ndarray, hashes: list[str], images: np.ndarray, settings: CleanSettings) -> Duplicates:
    """Group exact copies (same content hash) and near copies (see :func:`vitrina.quality.neighbours.scan_pairs`)."""
    n = len(hashes)
    content_ids: dict[str, int] = {}
    content = np.asarray([content_ids.setdefault(h, len(content_ids)) for h in hashes], dtype=np.int64)
    hashes64 = phash(images)
    scan = scan_pairs(
        features if n else None, hashes64, content, k=settings.neighbours, strong_bits=settings.hash_bits,
        loose_bits=settings.similar_hash_bits, min_similarity=settings.min_similarity,
        verify=lambda i, j: aligned_similarity(images, i, j), min_alignment=settings.min_alignment,
    )
    exact_i, exact_j = _exact_pairs(content)
    groups = group_pairs(n, np.concatenate([exact_i, scan.pairs_i]), np.concatenate([exact_j, scan.pairs_j]))
    return Duplicates(content, scan, groups)


def _exact_pairs(content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first image, later copy) for every image whose content an earlier image has."""
    exact_i, exact_j = [], []
    first_of: dict[int, int] = {}
    for i, c in enumerate(content.tolist()):
        if c in first_of:
            exact_i.append(first_of[c])
            exact_j.append(i)
        else:
            first_of[c] = i
    return np.asarray(exact_i, np.int64), np.asarray(exact_j, np.int64)


def describe_groups(duplicates: Duplicates, items: list[Item]) -> list[dict]:
    """One record per group (kind, splits, labels, leakage, closest-pair figures, members), leakage first."""
    scan, content = duplicates.scan, duplicates.content
    pair_info = {
        (int(a), int(b)): (int(bits), float(sim), float(lined))
        for a, b, bits, sim, lined in zip(scan.pairs_i, scan.pairs_j, scan.pair_bits, scan.pair_similarity, scan.pair_alignment)
    }
    out = []
    for members in duplicates.groups:
        exact = len({int(content[m]) for m in members}) == 1
        splits = sorted({items[m].split for m in members})
        labels = sorted({items[m].label for m in members})
        closest = [pair_info[(a, b)] for a in members for b in members if (a, b) in pair_info]
        out.append(
            {
                "group": len(out) + 1,
                "kind": "exact" if exact else "near",
                "size": len(members),
                "splits": splits,
                "labels": labels,
                "leakage": len(splits) > 1,
                "label_conflict": len(labels) > 1,
                "max_hash_bits": max((c[0] for c in closest), default=0),
                "min_similarity": round(min((c[1] for c in closest if np.isfinite(c[1])), default=1.0), 4),
                "min_alignment": round(min((c[2] for c in closest if np.isfinite(c[2])), default=1.0), 4),
                "members": [{"index": m, "path": items[m].path, "split": items[m].split, "label": items[m].label} for m in members],
            }
        )
    # Leakage first, then label conflicts, then the rest (each in order of first member).
    return sorted(out, key=lambda g: (not g["leakage"], not g["label_conflict"], g["group"]))
