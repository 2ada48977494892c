"""Small trained runs shared by the evaluation tests (trained once per test session)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.test_trainer import DEMO, make_shapes_dataset
from vitrina import api
from vitrina.config import resolve

TINY = {"model.input_size": 32, "train.batch_size": 16, "train.workers": 1, "train.patience": 0}


def quiet(_: str) -> None:
    pass


def split_shapes(root: Path, per_class: int = 24, test_per_class: int = 6) -> Path:
    """Shapes photos in train/ and test/ class folders (the test photos are not in train)."""
    make_shapes_dataset(root / "train", per_class=per_class)
    for folder in (root / "train").iterdir():
        target = root / "test" / folder.name
        target.mkdir(parents=True)
        for image in sorted(folder.iterdir())[-test_per_class:]:
            image.rename(target / image.name)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_shapes(tmp_path_factory.mktemp("shapes"))


def scratch_settings(cache_dir: Path, **extra: object) -> dict:
    return {"train.mode": "scratch", "model.name": "cnn1", "train.epochs": 4, "train.lr": 0.01,
            "train.cache_dir": str(cache_dir), **TINY, **extra}


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory: pytest.TempPathFactory, shapes: Path, cache_dir: Path) -> Path:
    """A cnn1 trained from scratch for a few epochs on the shapes photos."""
    out = tmp_path_factory.mktemp("runs") / "shapes"
    return api.train(shapes, resolve(overrides=scratch_settings(cache_dir)), out=out, progress=False, log=quiet).run_dir


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """efficientnet_lite0 features + a linear head on the embedded clothing photos (real data, 10 classes)."""
    settings = {"train.mode": "bottleneck", "model.input_size": 64, "train.epochs": 30, "train.workers": 1, "train.cache_dir": str(cache_dir)}
    out = tmp_path_factory.mktemp("runs") / "demo"
    return api.train(DEMO, resolve(overrides=settings), out=out, progress=False, log=quiet).run_dir
