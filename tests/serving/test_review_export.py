"""`vitrina review export`: exactly the reviewed photos, labelled by their reviews with provenance,
read back as training data alone and beside the original photos in a dataset.yaml."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.conftest import demo_photos
from vitrina.data.sources import load_dataset
from vitrina.errors import ConfigError
from vitrina.serving.moderation import CheckRecord, ModerationLog, PhotoRecord
from vitrina.serving.review_export import export_reviews
from vitrina.serving.reviews import record_review

CLASSES = ["hat", "shoes", "pants"]


def photo(path: Path) -> PhotoRecord:
    return PhotoRecord("00" * 32, "shoes", 0.6, "image/jpeg", path.read_bytes())


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_the_export_holds_exactly_the_settled_reviews(log_target: str, tmp_path: Path) -> None:
    shoes, hats = demo_photos("shoes"), demo_photos("hat")
    log = ModerationLog(log_target, store_images="all")
    ids = [log.record(CheckRecord("hat", "shoes", 0.6, "mismatch", "v1", [photo(p)])) for p in (shoes[0], hats[0], hats[1], shoes[1], shoes[2])]
    two_photos = log.record(CheckRecord("shoes", "shoes", 0.5, "uncertain", "v1", [photo(shoes[3]), photo(shoes[4])]))
    record_review(log, ids[0], "anna", "confirm", None, CLASSES)  # shoes, as predicted
    record_review(log, ids[1], "anna", "correct", "hat", CLASSES)
    record_review(log, ids[2], "omar", "correct", "beanie", CLASSES)  # a class the model does not know
    record_review(log, ids[3], "anna", "off_topic", None, CLASSES)
    record_review(log, ids[4], "anna", "correct", "hat", CLASSES)
    record_review(log, ids[4], "omar", "confirm", None, CLASSES)  # disputed: left out
    record_review(log, two_photos, "lea", "skip", None, CLASSES)  # a skip is no review
    log.close()

    result = export_reviews(log_target, tmp_path / "reviewed")
    rows = read(tmp_path / "reviewed" / "labels.csv")
    assert [(int(r["check_id"]), r["label"], r["reviewer"], r["new_class"]) for r in rows] == [
        (ids[0], "shoes", "anna", "false"), (ids[1], "hat", "anna", "false"), (ids[2], "beanie", "omar", "true")]
    assert (tmp_path / "reviewed" / rows[1]["path"]).read_bytes() == hats[0].read_bytes()
    assert all(r["model_version"] == "v1" and r["reviewed_at"].endswith("Z") for r in rows)
    [off] = read(tmp_path / "reviewed" / "off_topic.csv")
    assert int(off["check_id"]) == ids[3] and (tmp_path / "reviewed" / off["path"]).read_bytes() == shoes[1].read_bytes()
    assert (result.photos, result.off_topic, result.disputed_checks, result.missing_photos) == (3, 1, 1, 0)
    assert result.classes == {"shoes": 1, "hat": 1, "beanie": 1}
    with pytest.raises(ConfigError, match="not empty"):
        export_reviews(log_target, tmp_path / "reviewed")


def test_reviewed_photos_are_training_data_alone_and_beside_the_originals(tmp_path: Path) -> None:
    log = ModerationLog(tmp_path / "log.db", store_images="flagged")
    kept = log.record(CheckRecord("hat", "shoes", 0.6, "mismatch", "v1", [photo(demo_photos("shoes")[0])]))
    lost = log.record(CheckRecord("shoes", "shoes", 0.9, "match", "v1", [photo(demo_photos("shoes")[1])]))  # a match: not stored
    record_review(log, kept, "anna", "confirm", None, CLASSES)
    record_review(log, lost, "anna", "confirm", None, CLASSES)
    log.close()
    done = subprocess.run([sys.executable, "-m", "vitrina", "review", "export", "--db", str(tmp_path / "log.db"), "--out",
                           str(tmp_path / "reviewed")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 reviewed photos" in done.stdout and "1 reviewed photos were not kept by the log" in done.stdout

    alone = load_dataset(tmp_path / "reviewed" / "labels.csv")
    assert [(Path(s.path).name, s.label) for samples in alone.splits.values() for s in samples] == [(f"check{kept:08d}-0.jpg", "shoes")]
    originals = tmp_path / "original"
    for label in ("hat", "shoes"):
        shutil.copytree(demo_photos(label)[0].parent, originals / label)
    (tmp_path / "dataset.yaml").write_text("train: [original, reviewed/labels.csv]\n")
    both = load_dataset(tmp_path / "dataset.yaml", carve_val=False)
    photos = [s for s in both.splits["train"]]
    assert len(photos) == len(demo_photos("hat")) + len(demo_photos("shoes")) + 1
    assert photos[-1].path.endswith(f"check{kept:08d}-0.jpg") and photos[-1].label == "shoes"
