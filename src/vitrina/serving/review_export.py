"""From moderators' reviews to training data: the reviewed photos of the log as a dataset.

``labels.csv`` (``path,label`` plus provenance: check id, photo position, reviewer, review time,
model version, declared and predicted category) is a dataset ``vitrina train`` reads as it is,
or beside the original photos in a ``dataset.yaml`` (``train: [photos/, reviewed/labels.csv]``).
Photos reviewed as off-topic go to ``off_topic.csv`` instead. A check whose reviews disagree is
left out (and counted) until a moderator settles it; skips are not reviews. Photos the log did
not keep (``--store-images``) cannot be exported and are counted.
"""
from __future__ import annotations

import csv
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from vitrina.errors import ConfigError
from vitrina.serving.moderation import ModerationLog
from vitrina.serving.reviews import OFF_TOPIC
from vitrina.serving.schema import checks_table, photos_table, reviews_table

LABEL_COLUMNS = ["path", "label", "check_id", "position", "reviewer", "reviewed_at", "model_version", "declared", "predicted", "new_class"]
OFF_TOPIC_COLUMNS = ["path", "check_id", "position", "reviewer", "reviewed_at", "model_version", "declared"]


@dataclass
class ReviewExport:
    out: Path
    photos: int  # labelled photos written to labels.csv
    off_topic: int  # photos written to off_topic.csv
    classes: dict[str, int]  # photos per label
    disputed_checks: int  # reviews disagree: left out
    missing_photos: int  # reviewed, but the log kept no bytes


def export_reviews(database: str | os.PathLike, out: str | os.PathLike) -> ReviewExport:
    """Write the reviewed photos of the moderation log at ``database`` (a path or URL) into ``out``."""
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty; export into a new folder")
    if "://" not in str(database) and not Path(database).is_file():
        raise ConfigError(f"{database}: no moderation log here (give the --db that `vitrina serve` was given)")
    log = ModerationLog(database, store_images="none")
    try:
        decided, disputed = _decisions(log)
        (folder / "photos").mkdir(parents=True, exist_ok=True)
        result = ReviewExport(folder, 0, 0, {}, disputed, 0)
        with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as labels, \
                open(folder / "off_topic.csv", "w", newline="", encoding="utf-8") as off_topic:
            labelled, rejected = csv.writer(labels), csv.writer(off_topic)
            labelled.writerow(LABEL_COLUMNS)
            rejected.writerow(OFF_TOPIC_COLUMNS)
            with log.engine.connect() as connection:
                for check, review in decided:
                    photos = connection.execute(select(photos_table).where(photos_table.c.check_id == check.id)
                                                .order_by(photos_table.c.position)).all()
                    _write_photos(photos, folder, check, review, labelled, rejected, result)
    finally:
        log.close()
    return result


def _decisions(log: ModerationLog) -> tuple[list[tuple[Any, dict[str, Any]]], int]:
    """(check, its latest review) of every check whose reviews agree, and how many checks they dispute."""
    with log.engine.connect() as connection:
        reviews = connection.execute(select(reviews_table).where(reviews_table.c.action != "skip").order_by(reviews_table.c.id)).all()
        by_check: dict[int, list[Any]] = {}
        for review in reviews:
            by_check.setdefault(review.check_id, []).append(review)
        reviewed = select(reviews_table.c.check_id).where(reviews_table.c.action != "skip")
        checks = {row.id: row for row in connection.execute(select(checks_table).where(checks_table.c.id.in_(reviewed)))}
    decided, disputed = [], 0
    for check_id, trail in sorted(by_check.items()):
        if len({review.category or OFF_TOPIC for review in trail}) > 1:
            disputed += 1
            continue
        latest = trail[-1]
        decided.append((checks[check_id], {"reviewer": latest.reviewer, "time": latest.time, "action": latest.action,
                                           "category": latest.category, "new_class": bool(latest.new_class)}))
    return decided, disputed


def _write_photos(photos: list[Any], folder: Path, check: Any, review: dict[str, Any], labelled: Any, rejected: Any,
                  result: ReviewExport) -> None:
    for photo in photos:
        if photo.image is None:
            result.missing_photos += 1
            continue
        suffix = mimetypes.guess_extension(photo.media_type or "") or ".img"
        name = Path("photos") / f"check{check.id:08d}-{photo.position}{'.jpg' if suffix == '.jpe' else suffix}"
        (folder / name).write_bytes(bytes(photo.image))
        if review["action"] == "off_topic":
            rejected.writerow([name.as_posix(), check.id, photo.position, review["reviewer"], review["time"], check.model_version, check.declared])
            result.off_topic += 1
        else:
            label = review["category"]
            labelled.writerow([name.as_posix(), label, check.id, photo.position, review["reviewer"], review["time"],
                               check.model_version, check.declared, check.predicted, str(review["new_class"]).lower()])
            result.photos += 1
            result.classes[label] = result.classes.get(label, 0) + 1
