"""The moderation log on SQLite and on a real PostgreSQL server: records, schema versions and
migrations, replicas starting at once, and a database that is down."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.serving.conftest import upload
from tests.serving.postgres import PostgresServer
from vitrina.errors import ConfigError
from vitrina.serving import schema
from vitrina.serving.errors import LogUnavailable
from vitrina.serving.moderation import CheckRecord, ModerationLog, PhotoRecord, database_url

PHOTO = PhotoRecord("ab" * 32, "shoes", 0.9, "image/jpeg", b"jpeg bytes")
# The moderation log as vitrina 0.1.0 created it (schema version 1).
VERSION_1_TABLES = [
    "CREATE TABLE checks (id SERIAL PRIMARY KEY, time VARCHAR(32) NOT NULL, declared VARCHAR(200) NOT NULL, "
    "predicted VARCHAR(200) NOT NULL, confidence FLOAT NOT NULL, verdict VARCHAR(16) NOT NULL, model_version VARCHAR(64) NOT NULL)",
    "CREATE INDEX ix_checks_verdict_id ON checks (verdict, id)",
    "CREATE TABLE check_photos (check_id INTEGER NOT NULL REFERENCES checks (id), position INTEGER NOT NULL, "
    "sha256 VARCHAR(64) NOT NULL, predicted VARCHAR(200) NOT NULL, confidence FLOAT NOT NULL, media_type VARCHAR(100), "
    "image BYTEA, PRIMARY KEY (check_id, position))",
]


def test_the_log_records_and_filters_checks(log_target: str) -> None:
    log = ModerationLog(log_target, store_images="none")
    first = log.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO]))
    second = log.record(CheckRecord("shoes", "shoes", 0.8, "match", "v1", [PHOTO, PHOTO]))
    assert second == first + 1
    assert [c["id"] for c in log.recent()] == [second, first]
    mismatches = log.recent("mismatch")
    assert [c["declared"] for c in mismatches] == ["hat"] and mismatches[0]["photos"][0]["sha256"] == "ab" * 32
    assert len(log.recent("match")[0]["photos"]) == 2
    assert [c["id"] for c in log.recent(before_id=second)] == [first]
    assert [c["id"] for c in log.recent(after_id=0)] == [first, second]  # following the log: oldest first
    assert [c["id"] for c in log.recent(after_id=first)] == [second] and log.recent(after_id=second) == []
    assert log.photo(first, 0) is None  # images are kept only when configured
    log.close()
    kept = ModerationLog(log_target, store_images="all")
    third = kept.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v2", [PHOTO]))
    assert kept.photo(third, 0) == (b"jpeg bytes", "image/jpeg")
    assert len(kept.recent()) == 3  # the same log, opened again
    kept.close()


def schema_rows(target: str) -> list[tuple]:
    engine = create_engine(database_url(target))
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text("SELECT id, version FROM vitrina_schema"))]
    engine.dispose()
    return rows


def test_replicas_opening_a_fresh_log_at_once_create_it_once(log_target: str) -> None:
    opened: list[ModerationLog] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def open_log() -> None:
        start.wait()
        try:
            opened.append(ModerationLog(log_target))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    ids = [log.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO])) for log in opened]
    assert sorted(ids) == list(range(1, 9))
    assert schema_rows(log_target) == [(1, schema.SCHEMA_VERSION)]
    for log in opened:
        log.close()


def test_a_log_from_before_schema_versions_is_carried_forward(log_target: str) -> None:
    # the tables exactly as vitrina 0.1.0 created them (no version table, no review columns), with one check in them
    engine = create_engine(database_url(target=log_target))
    with engine.begin() as connection:
        for statement in VERSION_1_TABLES:
            connection.exec_driver_sql(statement.replace("SERIAL", "INTEGER" if engine.dialect.name == "sqlite" else "SERIAL"))
        connection.execute(text("INSERT INTO checks (time, declared, predicted, confidence, verdict, model_version) "
                                "VALUES ('2026-01-01T00:00:00.000Z', 'hat', 'shoes', 0.9, 'mismatch', 'v0')"))
    engine.dispose()
    log = ModerationLog(log_target)
    assert schema_rows(log_target) == [(1, schema.SCHEMA_VERSION)]
    [old] = log.recent()
    assert old["model_version"] == "v0" and old["top"] is None and old["margin"] is None and old["reviews"] == []
    assert log.record(CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PHOTO], top=[{"label": "shoes", "prob": 0.9}],
                                  margin=0.85, unknown_score=0.1, submitted_by="anna")) == 2
    assert log.recent()[0]["top"] == [{"label": "shoes", "prob": 0.9}] and log.recent()[0]["submitted_by"] == "anna"
    log.close()


def test_a_log_from_a_newer_vitrina_is_refused_clearly(log_target: str) -> None:
    ModerationLog(log_target).close()
    engine = create_engine(database_url(log_target))
    with engine.begin() as connection:
        connection.execute(text("UPDATE vitrina_schema SET version = :v"), {"v": schema.SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(ConfigError, match="newer vitrina"):
        ModerationLog(log_target)


def test_migrations_run_once_in_order(log_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    current = schema.SCHEMA_VERSION
    ModerationLog(log_target).close()
    ran: list[int] = []

    def add_column(connection) -> None:  # type: ignore[no-untyped-def]
        ran.append(current)
        connection.execute(text("ALTER TABLE checks ADD COLUMN note VARCHAR(100)"))

    monkeypatch.setattr(schema, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(schema.MIGRATIONS, current, add_column)
    ModerationLog(log_target).close()
    ModerationLog(log_target).close()
    assert ran == [current] and schema_rows(log_target) == [(1, current + 1)]


@pytest.mark.slow
def test_a_stopped_database_server_gives_503_in_bounded_time_then_recovers(
    postgres: PostgresServer, make_client: Callable[..., TestClient], confident_shoe: Path
) -> None:
    client = make_client(database=postgres.database(), db_timeout=2.0)
    check = {"files": {"image": upload(confident_shoe)}, "data": {"category": "shoes"}}
    assert client.post("/v1/check", **check).status_code == 200
    postgres.stop()
    try:
        started = time.monotonic()
        refused = client.post("/v1/check", **check)
        assert time.monotonic() - started < 2.0 + 3.0
        assert refused.status_code == 503 and refused.json()["error"] == "log_unavailable"
        assert refused.headers["retry-after"]
        assert client.get("/v1/checks").status_code == 503
    finally:
        postgres.start()
    assert client.post("/v1/check", **check).status_code == 200  # the pool reconnects by itself
    assert len(client.get("/v1/checks").json()["checks"]) == 2


def test_an_unreachable_database_is_a_clear_error_at_start(postgres: PostgresServer) -> None:
    url = f"postgresql+psycopg://vitrina@127.0.0.1:{postgres.port + 1}/nowhere"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ConfigError, match="moderation database"):
        ModerationLog(url)
    assert time.monotonic() - started < 10


def test_a_busy_log_is_retried_until_the_deadline(tmp_path: Path) -> None:
    import sqlite3

    log = ModerationLog(tmp_path / "log.db")
    check = CheckRecord("hat", "shoes", 0.9, "mismatch", "v1", [PhotoRecord("ab" * 32, "shoes", 0.9)])
    locker = sqlite3.connect(tmp_path / "log.db", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(LogUnavailable, match="locked") as refused:
        log.record(check, deadline=time.monotonic() + 0.5)
    assert 0.4 < time.monotonic() - started < 3 and refused.value.headers["Retry-After"]
    threading.Timer(0.5, lambda: locker.execute("COMMIT")).start()
    assert log.record(check, deadline=time.monotonic() + 5) == 1  # stored once the lock is gone
    assert len(log.recent()) == 1
    locker.close()
    log.close()
