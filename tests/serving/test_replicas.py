"""Two `vitrina serve` replicas on one PostgreSQL log under concurrent load, with a reader following
the log: no check lost or duplicated, every check id seen exactly once, in order."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import RunningServer, Runs, demo_photos, upload
from tests.serving.postgres import PostgresServer

pytestmark = pytest.mark.slow

WRITERS = 6
CHECKS_PER_WRITER = 12


def write(url: str, photos: list[Path], answered: list[int], failures: list[str]) -> None:
    with httpx.Client(timeout=60) as client:
        for i in range(CHECKS_PER_WRITER):
            response = client.post(f"{url}/v1/check", files={"image": upload(photos[i % len(photos)])}, data={"category": "shoes"})
            if response.status_code == 200:
                answered.append(response.json()["check_id"])
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")


def follow(url: str, seen: list[int], done: threading.Event) -> None:
    """Page through the log with ?after= while it is written, then once more after the writers end."""
    after = 0
    with httpx.Client(timeout=60) as client:
        while True:
            finished = done.is_set()
            page = client.get(f"{url}/v1/checks", params={"after": after, "limit": 7}).json()
            seen.extend(check["id"] for check in page["checks"])
            after = page["next_after"]
            if finished and not page["checks"]:
                return


def test_two_replicas_share_one_log_and_a_follower_sees_every_check_once(
    runs: Runs, postgres: PostgresServer, start_server: Callable[..., RunningServer]
) -> None:
    database = postgres.database()
    replicas = [start_server(runs.main, "--db", database) for _ in range(2)]
    photos = demo_photos("shoes") + demo_photos("hat")
    answered: list[int] = []
    failures: list[str] = []
    seen: list[int] = []
    done = threading.Event()
    reader = threading.Thread(target=follow, args=(replicas[1].url, seen, done))
    writers = [threading.Thread(target=write, args=(replicas[i % 2].url, photos, answered, failures)) for i in range(WRITERS)]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=300)
    done.set()
    reader.join(timeout=120)

    assert not failures and len(answered) == WRITERS * CHECKS_PER_WRITER
    assert sorted(answered) == list(range(1, len(answered) + 1))  # none lost, none twice
    assert seen == sorted(answered)  # the follower saw every check once, in order
    newest = httpx.get(f"{replicas[0].url}/v1/checks", params={"limit": 500}).json()["checks"]
    assert [c["id"] for c in newest] == sorted(answered, reverse=True)  # both replicas read the one log
