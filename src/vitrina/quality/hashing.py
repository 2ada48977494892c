"""Perceptual hashes: 64-bit DCT hashes (pHash) that survive resizing, recompression and small crops.

``phash(images)`` takes decoded uint8 images (N x H x W x C, the decoded-image cache) and returns
one ``uint64`` per image: the image in grey at 32 x 32, its 2-D DCT, and one bit per coefficient
of the 8 x 8 lowest frequencies telling whether it is above their median. Two photos of the same
picture differ in a few bits; unrelated photos in about half of them.
"""
from __future__ import annotations

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
