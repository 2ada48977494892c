"""The PNG helpers: valid images, sizes that grow with the content, edge cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrina import plots


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
        return img.size


def test_class_counts_chart_grows_with_the_class_count(tmp_path: Path) -> None:
    few = {"train": {"shoe": 40, "bag": 12, "hat": 0}, "val": {"shoe": 8, "bag": 3, "hat": 1}}
    many = {"train": {f"class {i} with a rather long name": i for i in range(40)}}
    small = png_size(plots.class_counts_chart(few, tmp_path / "few.png"))
    tall = png_size(plots.class_counts_chart(many, tmp_path / "many.png", title="Forty classes"))
    assert tall[1] > 2 * small[1]


def test_class_counts_chart_without_classes_says_so_and_draws_no_bars(tmp_path: Path) -> None:
    empty = np.asarray(Image.open(plots.class_counts_chart({}, tmp_path / "empty.png")).convert("RGB")).astype(int)
    one = np.asarray(Image.open(plots.class_counts_chart({"train": {"shoe": 5}}, tmp_path / "one.png")).convert("RGB")).astype(int)
    inked = lambda a: int((np.abs(a - 255).sum(axis=2) > 60).sum())  # noqa: E731 - pixels that are not near white
    coloured = lambda a: int(((a.max(axis=2) - a.min(axis=2)) > 60).sum())  # noqa: E731 - bars are coloured, text is grey
    assert inked(empty) > 0, "the empty chart says there are no classes"
    assert coloured(empty) == 0 and coloured(one) > 100, "bars only where there are classes"


def test_size_chart_scatter_hexbin_and_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = {(int(w), int(h)): int(n) for w, h, n in rng.integers(50, 900, size=(60, 3))}
    assert png_size(plots.size_chart({(28, 28): 60_000}, tmp_path / "one.png")) == (800, 800)
    png_size(plots.size_chart(sizes, tmp_path / "scatter.png"))
    png_size(plots.size_chart(sizes, tmp_path / "hexbin.png", max_points=10))
    png_size(plots.size_chart({}, tmp_path / "empty.png"))


def test_thumbnail_grid_layout(tmp_path: Path) -> None:
    images = [Image.new("RGB", (300, 200), (i * 20, 0, 0)) for i in range(10)]
    images.append(Image.new("L", (28, 28), 128))  # small images are enlarged
    captions = [f"product_photo_with_a_very_long_file_name_{i}.jpg\n300×200 · train" for i in range(11)]
    grid = plots.thumbnail_grid(images, captions, tmp_path / "grid.png", columns=4, cell=64, title="shoes")
    assert png_size(tmp_path / "grid.png") == grid.size
    assert grid.width == 6 + 4 * (64 + 6)
    assert grid.height > 3 * 64  # three rows plus captions and title
    assert grid.getpixel((6 + 32, 30 + 6 + 32)) == (0, 0, 0)  # first thumbnail, centre


def test_thumbnail_grid_edge_cases(tmp_path: Path) -> None:
    plots.thumbnail_grid([], [], tmp_path / "empty.png", title="no images")
    png_size(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="captions"):
        plots.thumbnail_grid([Image.new("RGB", (8, 8))], [], tmp_path / "bad.png")
