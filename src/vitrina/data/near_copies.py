"""Near-copy groups: photos so alike that one tells what the other is (burst shots, consecutive
frames, re-uploads, resized or recompressed copies).

A pair is a near copy when the perceptual hashes (:mod:`vitrina.data.hashing`) differ in at most
``hash_bits`` bits, or when L2-normalised image features agree to ``min_similarity``; groups are
the connected components of the pairs. Validation carved from training keeps each group on one
side (:func:`vitrina.data.splits.carve_by_group`), so a near copy of a training photo does not
make validation look easier than new photos are.
"""
from __future__ import annotations

import numpy as np

from vitrina.data.hashing import hamming

# lite0 features at 128 px, pairs of training photos at or above the similarity, and the share of
# those pairs within one class (a near copy shows one product): avito 0.85: 1,956 pairs, 0.999,
# largest group 125 / 0.9: 1,216, 0.999, largest 20; clothing-small 0.85: 157, 0.987, largest 33 /
# 0.9: 8, 0.875, largest 2; freiburg train0 0.85: 135, 1.000, largest 5 / 0.9: 20, 1.000, largest 2.
# Hashes: 6 bits or fewer 0.97-1.00 within one class on all three, 10 bits 0.61-0.995.
MIN_SIMILARITY = 0.9
HASH_BITS = 6
# Similarity floors tried in turn when groups chain a large part of a class together; 1.0 keeps
# only the hash pairs.
STRENGTHS = (MIN_SIMILARITY, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0)
# A group larger than this share of its class (and than MAX_BURST photos) is a chain of look-alikes.
MAX_GROUP_SHARE = 0.05
MAX_BURST = 8


def near_copy_pairs(
    hashes: np.ndarray, features: np.ndarray | None = None, *, hash_bits: int = HASH_BITS,
    min_similarity: float = MIN_SIMILARITY, block: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of near copies among ``hashes`` (and ``features``, when given),
    and each pair's strength: the features' similarity, or 1 for hashes within ``hash_bits``."""
    n = len(hashes)
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, block):
        stop = min(n, start + block)
        strength = (hamming(hashes[start:stop, None], hashes[None, :]) <= hash_bits).astype(np.float32)
        if features is not None:
            strength = np.maximum(strength, features[start:stop] @ features.T)
        i, j = np.nonzero(strength >= min(min_similarity, 1.0))
        upper = j > i + start
        found_i.append(i[upper] + start)
        found_j.append(j[upper])
        found_s.append(strength[i[upper], j[upper]])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return (np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64),
            np.concatenate(found_s).astype(np.float32))


def bounded_groups(
    labels: np.ndarray, pairs_i: np.ndarray, pairs_j: np.ndarray, strength: np.ndarray,
    max_share: float = MAX_GROUP_SHARE,
) -> tuple[np.ndarray, float]:
    """Groups of the pairs at the lowest strength (of :data:`STRENGTHS`) at which no group joins
    more than ``max_share`` of its class and more than :data:`MAX_BURST` photos by features: a
    class of look-alike photos (white-background product shots) is not one burst. Copies that the
    hashes pair (strength 1) count as one photo there and stay grouped whatever their number (a
    placeholder image uploaded a hundred times is one group). Returns the group ids and that strength."""
    n = len(labels)
    _, class_index, class_size = np.unique(labels, return_inverse=True, return_counts=True)
    by_hash = group_ids(n, pairs_i[strength >= 1.0], pairs_j[strength >= 1.0])
    for floor in STRENGTHS:
        keep = strength >= floor
        ids = group_ids(n, pairs_i[keep], pairs_j[keep])
        units = np.bincount(np.unique(np.stack([ids, by_hash], axis=1), axis=0)[:, 0], minlength=n)  # hash groups per group
        too_big = any(units[g] > max(MAX_BURST, max_share * class_size[class_index[first]]) for g, first in _firsts(ids))
        if not too_big or floor >= 1.0:
            return ids, floor
    return by_hash, 1.0


def _firsts(ids: np.ndarray) -> list[tuple[int, int]]:
    """(group, its first member) for every group."""
    _, first = np.unique(ids, return_index=True)
    return [(int(ids[f]), int(f)) for f in first]


def group_ids(n: int, pairs_i: np.ndarray, pairs_j: np.ndarray) -> np.ndarray:
    """The connected component of each of ``n`` nodes (numbered by first member, from 0)."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(pairs_i.tolist(), pairs_j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.asarray([find(x) for x in range(n)], dtype=np.int64)
    _, ids = np.unique(roots, return_inverse=True)
    return ids.astype(np.int64)
