"""One pass over all image pairs: near-duplicate candidates and each image's nearest neighbours.

Features are L2-normalised frozen backbone features (cosine similarity = dot product); hashes
are 64-bit perceptual hashes (:mod:`vitrina.data.hashing`). A pair is a near duplicate when
the hashes differ in at most ``strong_bits`` bits, or in at most ``loose_bits`` bits while the
features agree to ``min_similarity`` (a resized, recompressed or slightly cropped copy), and,
given a ``verify`` function, the two images line up pixel for pixel to ``min_alignment`` (see
:func:`vitrina.data.hashing.aligned_similarity`): close hashes and features alone also pair two
products photographed on one background. The
neighbours of an image leave out its own copies, so a duplicated off-topic photo still stands out.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vitrina.data.hashing import hamming
from vitrina.data.near_copies import group_ids


@dataclass
class PairScan:
    pairs_i: np.ndarray  # near-duplicate pairs (i < j), not byte-identical
    pairs_j: np.ndarray
    pair_bits: np.ndarray  # hash distance of each pair
    pair_similarity: np.ndarray  # feature cosine similarity of each pair (nan without features)
    pair_alignment: np.ndarray  # pixel alignment of each pair (nan without verification)
    knn_index: np.ndarray  # N x k nearest other images (copies excluded), -1 where fewer exist
    knn_similarity: np.ndarray  # N x k their cosine similarities, descending


def scan_pairs(
    features: np.ndarray | None,
    hashes: np.ndarray,
    content: np.ndarray,
    *,
    k: int = 10,
    strong_bits: int = 6,
    loose_bits: int = 20,
    min_similarity: float = 0.9,
    verify: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    min_alignment: float = 0.0,
    block: int = 1024,
) -> PairScan:
    """Near-duplicate pairs and k nearest neighbours (see the module doc).

    ``content`` holds an id per image that is equal for byte-identical files (those are exact
    duplicates, reported elsewhere, and are not each other's neighbours).
    """
    n = len(hashes)
    k = max(0, min(k, n - 1))
    pi, pj, pb, ps, pa = [], [], [], [], []
    verified: dict[tuple[int, int], float] = {}
    knn_index = np.full((n, k), -1, dtype=np.int64)
    knn_sim = np.full((n, k), np.nan, dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = np.arange(start, stop)
        bits = hamming(hashes[start:stop, None], hashes[None, :])
        same = content[start:stop, None] == content[None, :]
        if features is not None:
            sim = features[start:stop] @ features.T
            near = (bits <= strong_bits) | ((bits <= loose_bits) & (sim >= min_similarity))
        else:
            sim = None
            near = bits <= strong_bits
        near &= ~same
        i, j = np.nonzero(near)
        alignment = np.full(len(i), np.nan, np.float32)
        if verify is not None and len(i):
            # Each pair shows up twice (from either image, in one block or two): verify it once.
            a, b = np.minimum(i + start, j), np.maximum(i + start, j)
            fresh = [pair for pair in dict.fromkeys(zip(a.tolist(), b.tolist())) if pair not in verified]
            if fresh:
                fa, fb = np.asarray(fresh, np.int64).T
                verified.update(zip(fresh, verify(fa, fb).tolist()))
            alignment = np.asarray([verified[(x, y)] for x, y in zip(a.tolist(), b.tolist())], np.float32)
            lined_up = alignment >= min_alignment
            near[i[~lined_up], j[~lined_up]] = False
            i, j, alignment = i[lined_up], j[lined_up], alignment[lined_up]
        upper = j > i + start
        pi.append(i[upper] + start)
        pj.append(j[upper])
        pb.append(bits[i[upper], j[upper]])
        ps.append(sim[i[upper], j[upper]] if sim is not None else np.full(upper.sum(), np.nan, np.float32))
        pa.append(alignment[upper])
        if sim is not None and k:
            masked = np.where(same | near, -np.inf, sim)
            masked[rows - start, rows] = -np.inf
            top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
            top_sim = np.take_along_axis(masked, top, axis=1)
            order = np.argsort(-top_sim, axis=1)
            top, top_sim = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sim, order, axis=1)
            valid = np.isfinite(top_sim)
            knn_index[start:stop] = np.where(valid, top, -1)
            knn_sim[start:stop] = np.where(valid, top_sim, np.nan)
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    return PairScan(cat(pi, np.int64), cat(pj, np.int64), cat(pb, np.int16), cat(ps, np.float32), cat(pa, np.float32), knn_index, knn_sim)


def group_pairs(n: int, pairs_i: np.ndarray, pairs_j: np.ndarray) -> list[list[int]]:
    """Connected components (of two or more) of the pair graph, each sorted, in order of first member."""
    ids = group_ids(n, pairs_i, pairs_j)
    members: dict[int, list[int]] = {}
    for x in sorted(set(pairs_i.tolist()) | set(pairs_j.tolist())):
        members.setdefault(int(ids[x]), []).append(x)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
