"""Fixtures shared by the whole test suite."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import (
    CLEAN_TINY, DEMO, CleanedRun, Planted, make_dirty_dataset, quiet, scratch_settings, snapshot, split_shapes,
)
from vitrina import api
from vitrina.config import resolve
from vitrina.quality.clean import CleanSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT / ".." / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _plans_do_not_time_the_exported_model(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exporting and quantising a model takes seconds per run: only the tests marked
    ``expected_speed`` time it for real (runs in subprocesses always do); the others get a fixed figure."""
    if request.node.get_closest_marker("expected_speed") is None:
        from vitrina.inference.expected_speed import PredictionSpeed
        from vitrina.training import trainer

        monkeypatch.setattr(trainer, "measure_prediction_speed", lambda *args, **kwargs: PredictionSpeed(5.0, 1.0, 2))


@pytest.fixture(autouse=True, scope="session")
def _one_export_of_each_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test caches under its own folder, so each would export the same pretrained backbone to
    ONNX again (15-45 s each on two cores). The cached graphs are named by a digest of the weights
    and input they were exported from, so every test of this session may share one copy of each:
    a graph another test exported is copied into the test's cache before it would be exported again."""
    from vitrina.inference import expected_speed
    from vitrina.models import onnx_graph, stages

    # the workers of one parallel session share their base folder's parent; a lone session keeps its own
    base = tmp_path_factory.getbasetemp()
    store = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "onnx-graphs"
    store.mkdir(parents=True, exist_ok=True)
    cached_graph = onnx_graph.cached_graph

    def shared_cached_graph(path: Path, export: Callable[[], object]) -> Path:
        shared = store / path.name
        if not path.is_file() and shared.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared, path)
        cached_graph(path, export)
        if not shared.is_file():
            tmp = shared.with_name(f"{shared.name}.tmp{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, shared)
        return path

    with pytest.MonkeyPatch.context() as patch:
        for module in (onnx_graph, stages, expected_speed):
            patch.setattr(module, "cached_graph", shared_cached_graph)
        yield


# One backbone; a lower off-topic limit than the default, as 3 classes of 30 photos spread the distances wide.
ONE_BACKBONE = CleanSettings(models="efficientnet_lite0", outlier_z=2.0)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real datasets beside the repository, or skip the test when they are absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets not found: tests on the real datasets are skipped")
    return SHARED_DATASETS.resolve()


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """Write a small solid-colour image (format from the suffix) and return its path."""

    def make(
        path: Path, color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (16, 16)
    ) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path)
        return path

    return make


# ----------------------------------------------------------------------------- small trained runs (once per session)
@pytest.fixture
def pixel_csv(tmp_path: Path) -> Path:
    """A Fashion-MNIST-like CSV: label, then 784 grayscale pixels per row."""
    rng = np.random.default_rng(0)
    rows = ["label," + ",".join(f"pixel{i + 1}" for i in range(784))]
    for i in range(40):
        rows.append(f"{i % 4}," + ",".join(str(v) for v in rng.integers(0, 256, 784)))
    path = tmp_path / "pixels.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shapes photos in train/ and test/ class folders."""
    return split_shapes(tmp_path_factory.mktemp("shapes"))


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


# ----------------------------------------------------------------------------- a dataset with planted problems, cleaned once
@pytest.fixture(scope="session")
def quality_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality-cache")


@pytest.fixture(scope="session")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return make_dirty_dataset(tmp_path_factory.mktemp("dirty"))


@pytest.fixture(scope="session")
def cleaned(dirty: Planted, quality_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> CleanedRun:
    before = snapshot(dirty.root)
    config = resolve(overrides={**CLEAN_TINY, "train.cache_dir": str(quality_cache)})
    out = tmp_path_factory.mktemp("clean") / "report"
    result = api.clean(dirty.root, out=out, config=config, settings=ONE_BACKBONE, progress=False, log=quiet)
    return CleanedRun(dirty, result, before, snapshot(dirty.root))
