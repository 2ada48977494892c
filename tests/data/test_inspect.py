"""Dataset inspection over the bad-input zoo, duplicates across splits, and pixel samples."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import imagegen

from vitrina.data.inspect import inspect_dataset  # noqa: E402
from vitrina.data.samples import Dataset, Sample  # noqa: E402

# split -> class -> zoo names; "photo0_copy" is a byte-identical copy of photo0 in another split
LAYOUT = {
    "train": {
        "shoe": ["truncated", "cmyk", "gray16", "photo0", "huge"],
        "bag": ["empty", "palette", "rgba", "la", "photo1"],
    },
    "val": {"shoe": ["text", "exif_rotated", "gray", "photo0_copy"], "bag": ["photo2"]},
}
LOADER_SKIPPED = {"path": "notes.txt", "split": "train", "reason": "not an image file"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, imagegen.ZooImage]:
    cases = imagegen.write_zoo(tmp_path_factory.mktemp("zoo"))
    original = cases["photo0"]
    copy = original.path.with_name("photo0_copy.jpg")
    shutil.copyfile(original.path, copy)
    cases["photo0_copy"] = imagegen.ZooImage(copy, True, stored_mode="RGB", size=original.size)
    return cases


@pytest.fixture(scope="module")
def zoo_dataset(zoo: dict[str, imagegen.ZooImage]) -> Dataset:
    splits = {
        split: [Sample(str(zoo[name].path), label) for label, names in per_class.items() for name in names]
        for split, per_class in LAYOUT.items()
    }
    return Dataset(
        classes=["shoe", "bag"], splits=splits, source="zoo", skipped=[dict(LOADER_SKIPPED)],
        carved={"val": {"from": "train", "fraction": 0.15, "seed": 0}},
    )


@pytest.fixture(scope="module")
def inspected(zoo_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("report")
    return inspect_dataset(zoo_dataset, out, workers=2, progress=False), out


def without_seconds(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "seconds"}


def test_counts_only_readable_images(inspected: tuple[dict, Path], zoo: dict[str, imagegen.ZooImage]) -> None:
    summary, _ = inspected
    expected = {
        split: {label: sum(zoo[n].readable for n in names) for label, names in per_class.items()}
        for split, per_class in LAYOUT.items()
    }
    assert summary["splits"] == expected == {"train": {"shoe": 3, "bag": 4}, "val": {"shoe": 3, "bag": 1}}
    assert summary["totals"] == {"train": 7, "val": 4}
    assert summary["n_images"] == 15 and summary["n_readable"] == 11
    assert summary["classes"] == ["shoe", "bag"] and summary["source"] == "zoo"
    assert summary["carved"] == {"val": {"from": "train", "fraction": 0.15, "seed": 0}}


def test_every_problem_file_is_listed_with_its_reason(
    inspected: tuple[dict, Path], zoo: dict[str, imagegen.ZooImage]
) -> None:
    summary, out = inspected
    unreadable = {str(case.path): case.reason for case in zoo.values() if not case.readable}
    assert len(unreadable) == 4
    by_path = {entry["path"]: entry for entry in summary["skipped"]}
    assert set(by_path) == {*unreadable, LOADER_SKIPPED["path"]}
    for path, reason in unreadable.items():
        assert reason in by_path[path]["reason"]
    assert by_path[str(zoo["text"].path)]["split"] == "val"
    with (out / "skipped.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [entry["path"] for entry in summary["skipped"]]
    assert [row["reason"] for row in rows] == [entry["reason"] for entry in summary["skipped"]]


def test_stored_formats_modes_and_sizes(inspected: tuple[dict, Path]) -> None:
    summary, _ = inspected
    assert summary["formats"] == {"JPEG": 7, "PNG": 4}
    assert summary["modes"] == {"RGB": 5, "CMYK": 1, "I;16": 1, "P": 1, "RGBA": 1, "LA": 1, "L": 1}
    sizes = summary["sizes"]
    assert sizes["width"]["min"] == 30 and sizes["width"]["max"] == 200
    assert sizes["height"]["min"] == 20 and sizes["height"]["max"] == 200
    common = {(s["width"], s["height"]): s["count"] for s in sizes["most_common"]}
    assert common[(40, 30)] == 3 and common[(160, 120)] == 2
    assert common[(48, 96)] == 1  # EXIF-rotated photo as displayed


def test_cross_split_duplicate_is_flagged(inspected: tuple[dict, Path], zoo: dict[str, imagegen.ZooImage]) -> None:
    summary, _ = inspected
    assert len(summary["duplicates"]) == 1
    group = summary["duplicates"][0]
    assert [(m["path"], m["split"]) for m in group["members"]] == [
        (str(zoo["photo0"].path), "train"),
        (str(zoo["photo0_copy"].path), "val"),
    ]
    assert group["splits"] == ["train", "val"] and group["count"] == 2
    assert summary["cross_split_duplicates"] == [group]


def test_report_files(inspected: tuple[dict, Path]) -> None:
    summary, out = inspected
    assert json.loads((out / "summary.json").read_text()) == summary
    report = (out / "report.html").read_text()
    for entry in summary["skipped"]:
        assert entry["path"] in report
    assert "leakage" in report and "<script" not in report
    assert re.search(r'(src|href)="(?!data:)', report) is None  # self-contained: embedded images only
    pngs = ["class_counts.png", "image_sizes.png", *summary["thumbnails"].values()]
    assert sorted(summary["thumbnails"]) == ["bag", "shoe"]
    for name in pngs:
        with Image.open(out / name) as img:
            img.verify()
            assert img.format == "PNG"


def test_workers_do_not_change_the_result(
    inspected: tuple[dict, Path], zoo_dataset: Dataset, tmp_path: Path
) -> None:
    single = inspect_dataset(zoo_dataset, tmp_path, workers=1, progress=False)
    assert without_seconds(single) == without_seconds(inspected[0])


def test_truncated_jpeg_is_caught_without_thumbnails(zoo: dict[str, imagegen.ZooImage], tmp_path: Path) -> None:
    samples = [Sample(str(zoo[name].path), "shoe") for name in ("truncated", "photo0")]
    dataset = Dataset(classes=["shoe"], splits={"train": samples})
    summary = inspect_dataset(dataset, tmp_path, workers=1, progress=False, thumbnails_per_class=0)
    assert [e["path"] for e in summary["skipped"]] == [str(zoo["truncated"].path)]
    assert "truncated" in summary["skipped"][0]["reason"]
    assert summary["totals"] == {"train": 1} and summary["thumbnails"] == {}


def test_pixel_samples(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(4)]

    def row(n: int, label: str, pixels: np.ndarray) -> Sample:
        return Sample(f"fashion.csv#row={n}", label, pixels=pixels)

    dataset = Dataset(
        classes=["shirt", "boot"],
        splits={
            "train": [row(1, "shirt", arrays[0]), row(2, "boot", arrays[1]), row(3, "boot", arrays[2])],
            "test": [row(1, "shirt", arrays[0].copy()), row(2, "boot", arrays[3]),
                     row(3, "boot", np.zeros((28, 28, 3), np.uint8))],
        },
        source="fashion.csv",
    )
    summary = inspect_dataset(dataset, tmp_path, progress=False)
    assert summary["splits"] == {"train": {"shirt": 1, "boot": 2}, "test": {"shirt": 1, "boot": 1}}
    assert summary["formats"] == {"pixels": 5} and summary["modes"] == {"L": 5}
    assert summary["sizes"]["most_common"] == [{"width": 28, "height": 28, "count": 5}]
    assert [(e["path"], e["split"]) for e in summary["skipped"]] == [("fashion.csv#row=3", "test")]
    assert "invalid pixel array" in summary["skipped"][0]["reason"]
    (group,) = summary["cross_split_duplicates"]
    assert [m["split"] for m in group["members"]] == ["train", "test"]
    assert sorted(summary["thumbnails"]) == ["boot", "shirt"]
    with Image.open(tmp_path / summary["thumbnails"]["boot"]) as grid:
        grid.verify()
