"""Fixtures shared by the whole test suite."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT / ".." / "shared" / "datasets"


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
