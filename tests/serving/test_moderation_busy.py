"""A busy or locked moderation database: the check waits a bounded time, then answers 503; never a verdict left unlogged."""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import upload
from tests.serving.test_errors import assert_error

pytestmark = pytest.mark.slow


class ExclusiveLock:
    """Another program holding an exclusive transaction on the SQLite file, from another connection."""

    def __init__(self, path: Path, seconds: float):
        self.path, self.seconds = path, seconds
        self.held, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        connection.execute("BEGIN EXCLUSIVE")
        self.held.set()
        self.release.wait(self.seconds)
        connection.execute("ROLLBACK")
        connection.close()

    def __enter__(self) -> None:
        self.thread.start()
        assert self.held.wait(10), "could not lock the database"

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.thread.join(timeout=30)


def test_a_check_waits_out_a_short_lock_and_is_logged(client: TestClient, tmp_path: Path, confident_shoe: Path) -> None:
    # Longer than SQLite's own busy timeout (5 s), shorter than the server's retry window (--db-timeout, 10 s).
    with ExclusiveLock(tmp_path / "moderation.db", seconds=7):
        started = time.perf_counter()
        response = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"})
        waited = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert waited > 4  # the lock really was in the way
    logged = client.get("/v1/checks").json()["checks"]
    assert [c["id"] for c in logged] == [response.json()["check_id"]]


def test_a_check_behind_a_long_lock_is_refused_with_503_and_no_verdict(client: TestClient, tmp_path: Path, confident_shoe: Path) -> None:
    with ExclusiveLock(tmp_path / "moderation.db", seconds=60):  # held until the answer arrives
        response = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"})
    body = assert_error(response, 503, "log_unavailable", "moderation log", "retry")
    assert int(response.headers["retry-after"]) >= 1
    assert "verdict" not in body and "check_id" not in body
    assert client.get("/v1/checks").json()["checks"] == []  # not logged, and not answered either
