"""Moderators' reviews: what the log keeps for them, the queue (order, filters, skips,
disagreements), the audit trail, named API keys, and which photos are stored for how long."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.serving.conftest import demo_photos, upload
from vitrina.serving import moderation
from vitrina.serving.errors import InvalidQuery
from vitrina.serving.moderation import CheckRecord, ModerationLog, PhotoRecord, database_url
from vitrina.serving.reviews import CheckNotFound, QueueFilter, record_review, review_queue

PHOTO = PhotoRecord("cd" * 32, "shoes", 0.9, "image/jpeg", b"jpeg bytes")
CLASSES = ["hat", "shoes", "pants"]


def logged(log: ModerationLog, verdict: str, margin: float, declared: str = "hat", version: str = "v1") -> int:
    return log.record(CheckRecord(declared, "shoes", 0.6, verdict, version, [PHOTO], top=[{"label": "shoes", "prob": 0.6}],
                                  margin=margin, unknown_score=0.2))


def queue_ids(log: ModerationLog, reviewer: str = "anna", **filters: object) -> list[int]:
    return [c["id"] for c in review_queue(log, reviewer, QueueFilter(**filters))]  # type: ignore[arg-type]


def test_the_queue_offers_the_least_sure_first_and_keeps_every_review(log_target: str) -> None:
    log = ModerationLog(log_target)
    sure_mismatch = logged(log, "mismatch", 0.7)
    close_mismatch = logged(log, "mismatch", 0.05)
    uncertain = logged(log, "uncertain", 0.3)
    match = logged(log, "match", 0.9)
    assert queue_ids(log) == [close_mismatch, uncertain, sure_mismatch]  # matches only when asked
    assert queue_ids(log, order="newest") == [uncertain, close_mismatch, sure_mismatch]
    assert queue_ids(log, verdicts=("match",)) == [match]

    record_review(log, close_mismatch, "anna", "confirm", None, CLASSES)
    record_review(log, uncertain, "anna", "skip", None, CLASSES)
    assert queue_ids(log) == [sure_mismatch]  # reviewed, or skipped by anna
    assert queue_ids(log, reviewer="omar") == [uncertain, sure_mismatch]  # omar did not skip it

    record_review(log, sure_mismatch, "anna", "correct", "hat", CLASSES)
    record_review(log, sure_mismatch, "omar", "off_topic", None, CLASSES)  # a second opinion that disagrees
    [disputed] = review_queue(log, "lea", QueueFilter())[1:]
    assert disputed["id"] == sure_mismatch and disputed["disagreement"]
    assert [(r["reviewer"], r["action"], r["category"]) for r in disputed["reviews"]] == [("anna", "correct", "hat"), ("omar", "off_topic", None)]
    record_review(log, close_mismatch, "omar", "correct", "shoes", CLASSES)  # agrees with anna's confirm (the prediction)
    assert close_mismatch not in queue_ids(log, reviewer="lea")
    original = next(c for c in log.recent() if c["id"] == sure_mismatch)
    assert original["verdict"] == "mismatch" and original["predicted"] == "shoes" and len(original["reviews"]) == 2  # never overwritten
    log.close()


def test_queue_filters_and_review_validation(log_target: str) -> None:
    log = ModerationLog(log_target)
    first = logged(log, "mismatch", 0.5, declared="hat", version="v1")
    second = logged(log, "mismatch", 0.5, declared="pants", version="v2")
    assert queue_ids(log, category="pants") == [second] and queue_ids(log, category="shoes") == [second, first]
    assert queue_ids(log, model_version="v1") == [first]
    today = log.recent()[0]["time"][:10]
    assert queue_ids(log, since=today, until=today) == [second, first] and queue_ids(log, until="2000-01-01") == []
    review = record_review(log, first, "anna", "correct", "scarf", CLASSES)
    assert review["new_class"] and review["category"] == "scarf"
    with pytest.raises(InvalidQuery, match="needs the right category"):
        record_review(log, first, "anna", "correct", " ", CLASSES)
    with pytest.raises(InvalidQuery, match="takes none"):
        record_review(log, first, "anna", "confirm", "hat", CLASSES)
    with pytest.raises(CheckNotFound):
        record_review(log, 999, "anna", "confirm", None, CLASSES)
    broad = log.record(CheckRecord("tops", "tops", 0.8, "mismatch", "v1", [PHOTO], top=[{"label": "shirt", "prob": 0.5}],
                                   margin=0.1, declared_level="coarse"))
    assert record_review(log, broad, "anna", "confirm", None, CLASSES)["category"] == "shirt"  # the class, not its parent
    log.close()


def test_flagged_checks_keep_their_photos_within_the_cap_and_the_retention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(moderation, "PURGE_EVERY", math.inf)  # no purge in the background: this one is called below
    log = ModerationLog(tmp_path / "log.db", store_images="flagged", max_image_bytes=12, retention_days=1)
    match = log.record(CheckRecord("shoes", "shoes", 0.9, "match", "v1", [PHOTO]))
    mismatch = log.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO, PhotoRecord("ef" * 32, "shoes", 0.9, None, b"x" * 13)]))
    assert log.photo(match, 0) is None and log.photo(mismatch, 0) == (b"jpeg bytes", "image/jpeg")
    assert log.photo(mismatch, 1) is None  # over the 12-byte cap
    engine = create_engine(database_url(tmp_path / "log.db"))
    with engine.begin() as connection:
        connection.execute(text("UPDATE checks SET time = '2020-01-01T00:00:00.000Z' WHERE id = :id"), {"id": mismatch})
    engine.dispose()
    log.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO]))
    assert log.purge_old_photos() == 1
    assert log.photo(mismatch, 0) is None and len(log.recent()) == 3  # the photo is gone, the check stays
    log.close()


def test_the_first_check_a_log_records_removes_old_photos_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Longer than this machine has been up: the first purge must not wait for the clock to pass it.
    monkeypatch.setattr(moderation, "PURGE_EVERY", time.monotonic() + 3600)
    earlier = ModerationLog(tmp_path / "log.db", store_images="flagged", retention_days=1)
    old = earlier.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO]))
    engine = create_engine(database_url(tmp_path / "log.db"))
    with engine.begin() as connection:
        connection.execute(text("UPDATE checks SET time = '2020-01-01T00:00:00.000Z' WHERE id = :id"), {"id": old})
    engine.dispose()
    earlier.close()
    log = ModerationLog(tmp_path / "log.db", store_images="flagged", retention_days=1)  # a server started again
    log.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO]))  # then once an hour
    deadline = time.monotonic() + 30
    while log.photo(old, 0) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.photo(old, 0) is None and len(log.recent()) == 2
    log.close()


def test_the_review_api_names_the_reviewer(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("anna:anna-secret\nplainkey\n")
    client = make_client(api_keys_file=str(keys))
    anna, shop = {"X-API-Key": "anna-secret"}, {"X-API-Key": "plainkey"}
    photo = demo_photos("shoes")[0]
    check = client.post("/v1/check", files={"image": upload(photo)}, data={"category": "hat"}, headers=shop).json()
    assert client.get("/v1/reviews/queue").status_code == 401
    [queued] = client.get("/v1/reviews/queue", params={"verdict": ["mismatch", "uncertain", "match"]}, headers=anna).json()["checks"]
    assert queued["id"] == check["check_id"] and queued["submitted_by"].startswith("key-") and not queued["disagreement"]
    assert len(queued["top"]) == 5 and queued["margin"] >= 0 and queued["photos"][0]["image_stored"] == (check["verdict"] != "match")
    answer = client.post(f"/v1/checks/{check['check_id']}/review", json={"action": "correct", "category": "shoes"}, headers=anna)
    assert answer.status_code == 201 and answer.json()["review"]["reviewer"] == "anna"
    assert client.post(f"/v1/checks/{check['check_id']}/review", json={"action": "approve"}, headers=anna).status_code == 422
    assert client.post("/v1/checks/12345/review", json={"action": "skip"}, headers=anna).json()["error"] == "not_found"
    trail = client.get("/v1/checks", headers=anna).json()["checks"][0]["reviews"]
    assert [(r["reviewer"], r["action"], r["category"]) for r in trail] == [("anna", "correct", "shoes")]
    assert 'vitrina_reviews_total{action="correct"} 1.0' in client.get("/metrics", headers=anna).text
