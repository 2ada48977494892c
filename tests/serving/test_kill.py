"""kill -9 under load: every verdict a client received is in the moderation log afterwards."""
from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import RunningServer, Runs, demo_photos, upload

pytestmark = pytest.mark.slow

CLIENTS = 4
ANSWERS_BEFORE_KILL = 24


def post_checks(url: str, photos: list[Path], answered: list[dict], stop: threading.Event) -> None:
    """Post listing checks until the server dies; keep every 200 answer."""
    with httpx.Client(timeout=30) as client:
        i = 0
        while not stop.is_set():
            photo = photos[i % len(photos)]
            i += 1
            try:
                response = client.post(f"{url}/v1/check", files={"image": upload(photo)}, data={"category": "shoes"})
            except httpx.TransportError:
                return  # the server was killed mid-request: no answer, nothing promised
            if response.status_code == 200:
                answered.append(response.json())


def test_a_killed_server_loses_no_answered_verdict(runs: Runs, tmp_path: Path, start_server: Callable[..., RunningServer]) -> None:
    database = tmp_path / "log.db"
    server = start_server(runs.main, "--db", str(database))
    photos = demo_photos("shoes") + demo_photos("hat")
    answered: list[dict] = []
    stop = threading.Event()
    clients = [threading.Thread(target=post_checks, args=(server.url, photos, answered, stop)) for _ in range(CLIENTS)]
    for thread in clients:
        thread.start()
    while len(answered) < ANSWERS_BEFORE_KILL and server.process.poll() is None:
        threading.Event().wait(0.05)
    server.process.send_signal(signal.SIGKILL)  # mid-load: requests are in flight
    server.process.communicate(timeout=30)
    stop.set()
    for thread in clients:
        thread.join(timeout=60)

    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        logged = dict(connection.execute("SELECT id, verdict FROM checks").fetchall())
    assert len(answered) >= ANSWERS_BEFORE_KILL
    missing = [a["check_id"] for a in answered if logged.get(a["check_id"]) != a["verdict"]]
    assert not missing, f"answered but not logged: {missing}"

    restarted = start_server(runs.main, "--db", str(database))  # the log opens again and keeps numbering
    after = httpx.post(f"{restarted.url}/v1/check", files={"image": upload(photos[0])}, data={"category": "shoes"}).json()
    assert after["check_id"] > max(logged)
