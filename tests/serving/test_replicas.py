"""Two `vitrina serve` replicas on one PostgreSQL log under concurrent load, with a reader following
the log: no check lost or duplicated, every check id seen exactly once, in order; each replica
hot-reloads a new model file."""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import MODEL_FILES, RunningServer, Runs, demo_photos, replace_model, upload
from tests.serving.postgres import PostgresServer
from vitrina.serving.model import files_version, model_files

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


def test_each_replica_hot_reloads_a_new_model_and_logs_its_version(
    runs: Runs, postgres: PostgresServer, start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """A new model file in the folder both replicas serve: each loads it without a restart, and
    the checks they log from then on carry its version."""
    served = tmp_path / "served"
    served.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(runs.main / name, served / name)
    old, new = files_version(model_files(served)), files_version(model_files(runs.other))
    database = postgres.database()
    replicas = [start_server(served, "--db", database, "--reload-interval", "0.2") for _ in range(2)]
    photo = demo_photos("shoes")[0]
    for replica in replicas:
        assert httpx.get(f"{replica.url}/v1/model").json()["version"] == old
        httpx.post(f"{replica.url}/v1/check", files={"image": upload(photo)}, data={"category": "shoes"}, timeout=60)
    replace_model(runs.other, served)
    deadline = time.monotonic() + 60
    while any(httpx.get(f"{r.url}/v1/model").json()["version"] != new for r in replicas):
        assert time.monotonic() < deadline, "a replica did not load the new model"
        time.sleep(0.1)
    after = [httpx.post(f"{r.url}/v1/check", files={"image": upload(photo)}, data={"category": "shoes"}, timeout=60).json()
             for r in replicas]
    assert [answer["model_version"] for answer in after] == [new, new]
    logged = httpx.get(f"{replicas[0].url}/v1/checks", params={"limit": 10}).json()["checks"]
    assert [c["model_version"] for c in logged] == [new, new, old, old]
    assert all(r.process.poll() is None for r in replicas)
