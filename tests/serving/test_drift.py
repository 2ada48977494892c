"""Drift: a day dominated by one category is flagged, a day matching the training mix is not."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.serving.conftest import upload
from vitrina.serving.drift import drift_report
from vitrina.serving.moderation import CheckRecord, ModerationLog, database_url

TRAINING = {"hat": 50, "shoes": 30, "pants": 20}


def log_day(log: ModerationLog, target: str, day: str, mix: dict[str, int], unknown_score: float = 0.1) -> None:
    first = None
    for category, count in mix.items():
        for _ in range(count):
            check_id = log.record(CheckRecord(category, category, 0.9, "match", "v1", [], unknown_score=unknown_score))
            first = first or check_id
    engine = create_engine(database_url(target))
    with engine.begin() as connection:
        connection.execute(text("UPDATE checks SET time = :t WHERE id >= :first"), {"t": f"{day}T12:00:00.000Z", "first": first})
    engine.dispose()


def test_a_day_dominated_by_one_category_is_flagged_and_one_like_training_is_not(log_target: str) -> None:
    log = ModerationLog(log_target)
    today = datetime(2026, 12, 4, 15, tzinfo=timezone.utc)
    yesterday, before = (today - timedelta(days=1)).strftime("%Y-%m-%d"), (today - timedelta(days=2)).strftime("%Y-%m-%d")
    log_day(log, log_target, before, {"pants": 10})  # a quiet day: too few checks to judge
    log_day(log, log_target, yesterday, {"hat": 25, "shoes": 15, "pants": 10})  # the training mix
    log_day(log, log_target, today.strftime("%Y-%m-%d"), {"pants": 52, "hat": 8}, unknown_score=0.9)  # pants everywhere
    report = drift_report(log, 7, TRAINING, unknown_threshold=0.5, today=today)
    quiet, usual, odd = report["days"]
    assert (quiet["checks"], quiet["flags"]) == (10, [])
    assert usual["checks"] == 50 and usual["flags"] == [] and usual["shares"] == {"mismatch": 0.0, "uncertain": 0.0, "unknown": 0.0}
    flagged = {(f["category"], f["by"], f["direction"]) for f in odd["flags"]}
    assert ("pants", "declared", "high") in flagged and ("pants", "predicted", "high") in flagged
    assert ("shoes", "predicted", "low") in flagged and not any(f[0] == "hat" for f in flagged if f[2] == "high")
    assert odd["shares"]["unknown"] == 1.0 and report["training_mix"]["hat"] == 0.5
    assert [d["day"] for d in drift_report(log, 1, TRAINING, 0.5, today=today)["days"]] == [today.strftime("%Y-%m-%d")]
    log.close()


def test_the_drift_route_and_metrics(make_client: Callable[..., TestClient], confident_shoe: Path) -> None:
    client = make_client()
    for declared in ("hat", "shoes"):
        client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": declared})
    report = client.get("/v1/drift", params={"days": 3}).json()
    [day] = report["days"]
    assert day["checks"] == 2 and day["declared"] == {"hat": 1, "shoes": 1} and day["flags"] == []  # under 50 checks
    assert abs(sum(report["training_mix"].values()) - 1) < 1e-9 and report["min_checks"] == 50
    metrics = client.get("/metrics").text
    assert 'vitrina_checks_by_category_total{declared="hat",predicted="shoes"} 1.0' in metrics
