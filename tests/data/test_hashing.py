"""Perceptual hashes: copies stay close, different photos do not."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vitrina.data import hashing
from vitrina.data.hashing import close_pairs, hamming, phash

DEMO = Path(__file__).resolve().parents[2] / "src" / "vitrina" / "demo" / "clothing"


def as_array(img: Image.Image, side: int = 128) -> np.ndarray:
    return np.asarray(img.convert("RGB").resize((side, side)))


def recompressed(img: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_copies_are_close_and_other_photos_far() -> None:
    paths = sorted((DEMO / "train" / "shoes").iterdir())[:6] + sorted((DEMO / "train" / "hat").iterdir())[:6]
    originals = [Image.open(p).convert("RGB") for p in paths]
    copies = []
    for img in originals:
        w, h = img.size
        cropped = img.crop((w // 30, h // 30, w - w // 30, h - h // 30)).resize((w // 2, h // 2))
        copies.append(recompressed(cropped, 60))
    a = phash(np.stack([as_array(i) for i in originals]))
    b = phash(np.stack([as_array(i) for i in copies]))
    assert a.dtype == np.uint64
    same = hamming(a, b)
    assert same.max() <= 12, same
    others = hamming(a[:, None], a[None, :])[~np.eye(len(a), dtype=bool)]
    assert others.min() > same.max()
    assert np.median(others) >= 20


def test_close_pairs_and_popcount_fallback(monkeypatch) -> None:
    hashes = np.array([0, 0b111, 2**63, 0b1], dtype=np.uint64)
    found = {(int(i), int(j), int(d)) for part in close_pairs(hashes, 2, block=2) for i, j, d in zip(*part)}
    assert found == {(0, 2, 1), (0, 3, 1), (1, 3, 2), (2, 3, 2)}
    expected = hamming(hashes[:, None], hashes[None, :])
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert np.array_equal(hashing.hamming(hashes[:, None], hashes[None, :]), expected)
    assert expected[0, 2] == 1 and expected[1, 2] == 4


def test_grayscale_and_empty_inputs() -> None:
    gray = np.random.default_rng(0).integers(0, 255, size=(3, 40, 40, 1), dtype=np.uint8)
    assert phash(gray).shape == (3,)
    assert phash(np.zeros((0, 40, 40, 3), np.uint8)).shape == (0,)


def test_aligned_similarity_separates_copies_from_look_alikes() -> None:
    # Copies: cropped up to about 8% a side, resized, recompressed. Look-alikes: other photos of the
    # same class, shot the same way (the demo's shoes share a white background and a pose).
    paths = sorted((DEMO / "train" / "shoes").iterdir())[:8]
    originals = [Image.open(p).convert("RGB") for p in paths]
    rng = np.random.default_rng(0)
    copies = []
    for img in originals:
        w, h = img.size
        left, top, right, bottom = (rng.uniform(0, 0.08, size=4) * [w, h, w, h]).astype(int)
        cropped = img.crop((left, top, w - right, h - bottom)).resize((int(w * 0.6), int(h * 0.6)))
        copies.append(recompressed(cropped, 55))
    images = np.stack([as_array(i) for i in originals + copies])
    n = len(originals)
    own = hashing.aligned_similarity(images, np.arange(n), np.arange(n) + n)
    i, j = np.triu_indices(n, k=1)
    others = hashing.aligned_similarity(images, i, j)
    assert own.min() >= 0.9, own
    assert others.max() < own.min(), (others.max(), own.min())
    # Symmetric, and an image lines up with itself perfectly.
    assert np.allclose(hashing.aligned_similarity(images, np.array([0]), np.array([n])), own[:1])
    assert hashing.aligned_similarity(images, np.array([3]), np.array([3]))[0] > 0.999
