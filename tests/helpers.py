"""Helpers shared by the tests: real small datasets made on the fly and quiet settings.

Fixtures built from them (trained runs, a cleaned dataset) live in ``conftest.py``.
"""
from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.imagegen import photo
from vitrina.api.data import CleanResult
from vitrina.config import Config, resolve

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "src" / "vitrina" / "demo" / "clothing"
# Small scratch runs: a few seconds each.
TINY = {"model.input_size": 32, "train.batch_size": 16, "train.workers": 1, "train.patience": 0}
# Small inputs and eager PyTorch features (no ONNX export) keep a clean run to seconds.
CLEAN_TINY = {"model.input_size": 96, "train.feature_runtime": "torch", "train.workers": 1}
DIRTY_CLASSES = ("hat", "pants", "shoes")


def quiet(_: str) -> None:
    """A log function that drops every message."""


def make_shapes_dataset(root: Path, per_class: int = 24, size: int = 40) -> Path:
    """Three visually distinct classes of real (noisy) photos-like images: red discs, green bars, blue squares."""
    rng = np.random.default_rng(0)
    for name, colour in (("disc", (210, 40, 40)), ("bar", (40, 180, 60)), ("square", (40, 60, 210))):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(200, 256, size=(size, size, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:size, :size]
            cx, cy = rng.integers(12, size - 12, size=2)
            if name == "disc":
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < 81
            elif name == "bar":
                mask = (abs(xx - cx) < 3) & (abs(yy - cy) < 12)
            else:
                mask = (abs(xx - cx) < 8) & (abs(yy - cy) < 8)
            arr[mask] = np.clip(np.array(colour) + rng.integers(-20, 20, size=3), 0, 255)
            Image.fromarray(arr).save(folder / f"{name}{i:03d}.jpg", quality=90)
    return root


def split_shapes(root: Path, per_class: int = 24, test_per_class: int = 6) -> Path:
    """Shapes photos in train/ and test/ class folders (the test photos are not in train)."""
    make_shapes_dataset(root / "train", per_class=per_class)
    for folder in (root / "train").iterdir():
        target = root / "test" / folder.name
        target.mkdir(parents=True)
        for image in sorted(folder.iterdir())[-test_per_class:]:
            image.rename(target / image.name)
    return root


def scratch_settings(cache_dir: Path, **extra: object) -> dict:
    return {"train.mode": "scratch", "model.name": "cnn1", "train.epochs": 4, "train.lr": 0.01,
            "train.cache_dir": str(cache_dir), **TINY, **extra}


def scratch_config(tmp_path: Path, **extra: object) -> Config:
    """cnn1 from scratch at 32 px for 4 epochs, caching under ``tmp_path``."""
    overrides = {
        "train.mode": "scratch", "model.name": "cnn1", "model.input_size": 32, "train.epochs": 4,
        "train.batch_size": 16, "train.workers": 1, "train.cache_dir": str(tmp_path / "cache"), "train.patience": 0,
        **extra,
    }
    return resolve(overrides=overrides)


@dataclass
class Planted:
    root: Path
    exact_copy: Path  # a test photo copied byte for byte into train (leakage)
    exact_original: Path
    near_copy: Path  # a test photo resized, recompressed and slightly cropped into train
    near_original: Path
    mislabelled: Path  # a pants photo moved into hat/
    off_topic: Path  # a synthetic picture among the pants
    broken: Path  # not an image


def make_dirty_dataset(root: Path) -> Planted:
    """Hats, pants and shoes (real photos, train/ and test/) with one problem of each kind planted."""
    for split, source in (("train", "train"), ("test", "test")):
        for name in DIRTY_CLASSES:
            shutil.copytree(DEMO / source / name, root / split / name)
    exact_original = sorted((root / "test" / "hat").iterdir())[0]
    exact_copy = root / "train" / "hat" / "copied.jpg"
    shutil.copyfile(exact_original, exact_copy)
    near_original = sorted((root / "test" / "shoes").iterdir())[0]
    near_copy = root / "train" / "shoes" / "resized.jpg"
    with Image.open(near_original) as img:
        w, h = img.size
        img.crop((w // 40, h // 40, w - w // 40, h - h // 40)).resize((w * 2 // 3, h * 2 // 3)).save(near_copy, quality=70)
    pants = sorted((root / "train" / "pants").iterdir())[3]
    mislabelled = root / "train" / "hat" / f"moved-{pants.name}"
    pants.rename(mislabelled)
    off_topic = root / "train" / "pants" / "synthetic.jpg"
    photo(200, 150, seed=3).save(off_topic, quality=90)
    broken = root / "train" / "shoes" / "broken.jpg"
    broken.write_bytes(b"not an image at all" * 10)
    return Planted(root, exact_copy, exact_original, near_copy, near_original, mislabelled, off_topic, broken)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root`` (to prove nothing was touched)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def features_of_clusters(n_per_class: int = 40, classes: int = 4, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters on the unit sphere and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    x = centres[labels] + 0.35 * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@dataclass
class CleanedRun:
    """A dataset with planted problems, cleaned: its files before and after, and the result."""

    planted: Planted
    result: CleanResult
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]


def shuffle_labels(train: Path, target: Path, seed: int = 0) -> Path:
    """Copy the class folders under ``train`` to ``target`` with every photo's label shuffled."""

    files = sorted(train.glob("*/*.jpg"))
    labels = [f.parent.name for f in files]
    random.Random(seed).shuffle(labels)
    for file, label in zip(files, labels):
        (target / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target / label / file.name)
    return target
