"""A small real dataset with planted problems, cleaned once per test session."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagegen import photo
from vitrina import api
from vitrina.api_quality import CleanResult
from vitrina.config import resolve
from vitrina.quality.clean import CleanSettings

DEMO = Path(__file__).resolve().parents[2] / "src" / "vitrina" / "demo" / "clothing"
CLASSES = ("hat", "pants", "shoes")
# Small inputs and eager PyTorch features (no ONNX export) keep a clean run to seconds.
TINY = {"model.input_size": 96, "train.feature_runtime": "torch", "train.workers": 1}
# One backbone; a lower off-topic limit than the default, as 3 classes of 30 photos spread the distances wide.
ONE_BACKBONE = CleanSettings(models="efficientnet_lite0", outlier_z=2.0)


def quiet(_: str) -> None:
    pass


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
        for name in CLASSES:
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
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def quality_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality-cache")


@pytest.fixture(scope="session")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return make_dirty_dataset(tmp_path_factory.mktemp("dirty"))


@dataclass
class CleanedRun:
    planted: Planted
    result: CleanResult
    before: dict[str, tuple[int, int]]
    after: dict[str, tuple[int, int]]


@pytest.fixture(scope="session")
def cleaned(dirty: Planted, quality_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> CleanedRun:
    before = snapshot(dirty.root)
    config = resolve(overrides={**TINY, "train.cache_dir": str(quality_cache)})
    out = tmp_path_factory.mktemp("clean") / "report"
    result = api.clean(dirty.root, out=out, config=config, settings=ONE_BACKBONE, progress=False, log=quiet)
    return CleanedRun(dirty, result, before, snapshot(dirty.root))


def features_of_clusters(n_per_class: int = 40, classes: int = 4, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters on the unit sphere and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    x = centres[labels] + 0.35 * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels
