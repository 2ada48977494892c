"""`vitrina inspect` on the real datasets: totals match the datasets' README, classes match a file count."""
from __future__ import annotations

from pathlib import Path

import pytest

from vitrina import api

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.shared


def count_files(folder: Path) -> dict[str, int]:
    return {d.name: sum(1 for f in d.iterdir() if f.is_file()) for d in sorted(folder.iterdir()) if d.is_dir()}


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("avito", {"train": 3421, "val": 855}),
        ("clothing-small", {"train": 3068, "val": 341, "test": 372}),
    ],
)
def test_folder_datasets(shared_datasets: Path, tmp_path: Path, dataset: str, expected: dict[str, int]) -> None:
    result = api.inspect(shared_datasets / dataset, out=tmp_path / "out", progress=False)
    assert result.summary["totals"] == expected
    on_disk = {"train": "train", "val": "validation", "test": "test"}
    for split in expected:
        assert result.summary["splits"][split] == count_files(shared_datasets / dataset / on_disk[split])
    assert (tmp_path / "out" / "report.html").is_file()
    if dataset == "avito":  # the README's 49 exact-duplicate groups straddling train and validation
        assert len(result.summary["cross_split_duplicates"]) == 49


def test_fashion_mnist_test_csv(shared_datasets: Path, tmp_path: Path) -> None:
    result = api.inspect(shared_datasets / "fashion-mnist" / "fashion-mnist_test.csv.gz", out=tmp_path / "out", progress=False)
    assert result.summary["totals"] == {"train": 10000}
    assert sorted(result.summary["splits"]["train"].values()) == [1000] * 10


def test_freiburg_split0_yaml(shared_datasets: Path, tmp_path: Path) -> None:
    result = api.inspect(REPO / "examples" / "freiburg-split0.yaml", out=tmp_path / "out", progress=False)
    base = shared_datasets / "freiburg-groceries" / "splits"
    lines = {name: sum(1 for line in (base / f"{name}0.txt").read_text().splitlines() if line.strip()) for name in ("train", "test")}
    assert result.summary["totals"] == lines
    assert sum(lines.values()) == 4947
    per_class = {c: result.summary["splits"]["train"][c] + result.summary["splits"]["test"][c] for c in result.summary["classes"]}
    assert per_class == count_files(shared_datasets / "freiburg-groceries" / "images")
