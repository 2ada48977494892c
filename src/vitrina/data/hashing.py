"""Perceptual hashes: 64-bit DCT hashes (pHash) that survive resizing, recompression and small crops.

``phash(images)`` takes decoded uint8 images (N x H x W x C, the decoded-image cache) and returns
one ``uint64`` per image: the image in grey at 32 x 32, its 2-D DCT, and one bit per coefficient
of the 8 x 8 lowest frequencies telling whether it is above their median. Two photos of the same
picture differ in a few bits; unrelated photos in about half of them.

``aligned_similarity`` then checks a candidate pair pixel for pixel, allowing a small crop.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_SIDE = 8  # 8 x 8 coefficients -> 64 bits
_SAMPLED_SIDE = 32  # the DCT is taken of the image at 32 x 32
_BIT_WEIGHTS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def _grey_small(image: np.ndarray) -> np.ndarray:
    array = image[:, :, 0] if image.shape[-1] == 1 else image
    img = Image.fromarray(np.ascontiguousarray(array))
    if img.mode != "L":
        img = img.convert("L")
    img = img.resize((_SAMPLED_SIDE, _SAMPLED_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.float32)


def phash(images: np.ndarray, chunk: int = 512) -> np.ndarray:
    """64-bit DCT perceptual hashes of uint8 N x H x W x C images (``uint64``, one per image)."""
    out = np.zeros(len(images), dtype=np.uint64)
    for start in range(0, len(images), chunk):
        part = np.asarray(images[start : start + chunk])
        small = np.stack([_grey_small(image) for image in part]) if len(part) else np.zeros((0, 32, 32), np.float32)
        low = dctn(small, type=2, axes=(1, 2), norm="ortho")[:, :HASH_SIDE, :HASH_SIDE].reshape(len(part), -1)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[start : start + len(part)] = (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)
    return out


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int16)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.int16)
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _BYTE_BITS[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.int16)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise distance between hashes (broadcasting ``uint64`` arrays)."""
    return _popcount(np.bitwise_xor(a, b))


def close_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All pairs ``i < j`` whose hashes differ in at most ``max_distance`` bits, block by block.

    Yields ``(i, j, distance)`` arrays; memory stays at ``block`` x N small integers.
    """
    n = len(hashes)
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        dist = hamming(rows[:, None], hashes[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = j > i
        yield i[keep], j[keep], dist[i[keep] - start, j[keep]]


# ----------------------------------------------------------------------------- verification
_GRID = 64  # each image is compared in grey at 64 x 64 ...
_PATCH = 24  # ... its crops resampled to 24 x 24
_COARSE = (0.0, 0.06, 0.12)  # crop per side tried first (a near copy is often cropped a little) ...
_STEP = 0.03  # ... then refined by this much either way around the best
_MAX_MARGIN = 0.15


@functools.lru_cache(maxsize=256)
def _interpolation(lo: float, hi: float, out: int = _PATCH, size: int = _GRID) -> np.ndarray:
    """``out`` x ``size`` matrix resampling the span [lo, hi) of a ``size`` axis to ``out`` samples (linear)."""
    centres = lo * size + (np.arange(out) + 0.5) * (hi - lo) * size / out - 0.5
    left = np.clip(np.floor(centres).astype(int), 0, size - 1)
    right = np.clip(left + 1, 0, size - 1)
    frac = np.clip(centres - np.floor(centres), 0, 1)
    m = np.zeros((out, size), np.float32)
    m[np.arange(out), left] += 1 - frac
    m[np.arange(out), right] += frac
    return m


_FULL = _interpolation(0.0, 1.0)


def _grey_grid(image: np.ndarray) -> np.ndarray:
    array = image[:, :, 0] if image.shape[-1] == 1 else image
    img = Image.fromarray(np.ascontiguousarray(array))
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img.resize((_GRID, _GRID), Image.Resampling.BOX), dtype=np.float32)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x.reshape(*x.shape[:-2], -1)
    x = x - x.mean(axis=-1, keepdims=True)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)


@functools.lru_cache(maxsize=1024)
def _stacked(margins: tuple[tuple[float, float], ...]) -> np.ndarray:
    return np.stack([_interpolation(round(a, 4), round(1 - b, 4)) for a, b in margins])


def _crop_correlations(source: np.ndarray, whole: np.ndarray, rows: list, cols: list) -> np.ndarray:
    """Correlation of ``whole`` with ``source`` cropped by each (rows margins) x (cols margins) pair."""
    row_m = _stacked(tuple(rows))
    col_m = _stacked(tuple(cols)).transpose(0, 2, 1)
    crops = (row_m @ source)[:, None] @ col_m[None]  # len(rows) x len(cols) x 24 x 24
    return _standardise(crops) @ whole


def _best_crop_correlation(source: np.ndarray, target: np.ndarray) -> float:
    """Highest correlation of ``target`` (whole) with a crop of ``source``: a coarse search, then a finer one."""
    whole = _standardise(_FULL @ target @ _FULL.T)
    coarse = [(a, b) for a in _COARSE for b in _COARSE]
    scores = _crop_correlations(source, whole, coarse, coarse)
    r, c = np.unravel_index(int(np.argmax(scores)), scores.shape)

    def around(margins: tuple[float, float]) -> list[tuple[float, float]]:
        near = lambda m: sorted({min(_MAX_MARGIN, max(0.0, m + d)) for d in (-_STEP, 0.0, _STEP)})  # noqa: E731
        return [(a, b) for a in near(margins[0]) for b in near(margins[1])]

    fine = _crop_correlations(source, whole, around(coarse[r]), around(coarse[c]))
    return float(max(scores.max(), fine.max()))


def aligned_similarity(images: np.ndarray, pairs_i: np.ndarray, pairs_j: np.ndarray) -> np.ndarray:
    """How well each pair of images lines up pixel for pixel (-1..1), allowing a small crop of either.

    The correlation of the two images in grey, the better of cropping the first or the second by
    0-15% per side. Resized, recompressed or slightly cropped copies of one photo score about 0.9
    or more (freiburg's: median 0.97); photos of other products on one shelf mostly 0.6-0.85. Two
    similar shapes on plain backgrounds can reach 0.9, so a pair should also have similar features.
    """
    grids: dict[int, np.ndarray] = {}

    def grid(k: int) -> np.ndarray:
        if k not in grids:
            grids[k] = _grey_grid(np.asarray(images[k]))
        return grids[k]

    out = np.zeros(len(pairs_i), np.float32)
    for n, (i, j) in enumerate(zip(pairs_i.tolist(), pairs_j.tolist())):
        a, b = grid(i), grid(j)
        out[n] = max(_best_crop_correlation(a, b), _best_crop_correlation(b, a))
    return out
