"""The real `vitrina serve` process: restarts keep the moderation log, shutdown finishes requests."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import RunningServer, Runs, upload
from tests.serving.postgres import free_port

pytestmark = pytest.mark.slow


def test_the_moderation_log_survives_a_restart(runs: Runs, tmp_path: Path, confident_shoe: Path, start_server: Callable[..., RunningServer]) -> None:
    database = tmp_path / "log.db"
    server = start_server(runs.main, "--db", str(database))
    check = httpx.post(f"{server.url}/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"}).json()
    assert check["verdict"] == "mismatch"
    assert "vitrina serve: stopped" in server.stop()
    assert server.process.returncode == 0

    restarted = start_server(runs.main, "--db", f"sqlite:///{database}")
    logged = httpx.get(f"{restarted.url}/v1/checks", params={"verdict": "mismatch"}).json()["checks"]
    assert [c["id"] for c in logged] == [check["check_id"]]
    assert logged[0]["declared"] == "hat" and logged[0]["predicted"] == "shoes"
    assert logged[0]["photos"][0]["sha256"] == check["photos"][0]["sha256"]
    assert logged[0]["model_version"] == check["model_version"]


def test_shutdown_finishes_the_requests_in_flight(runs: Runs, tmp_path: Path, confident_shoe: Path, start_server: Callable[..., RunningServer]) -> None:
    # A one-second batch window holds the request inside the server while SIGTERM arrives.
    server = start_server(runs.main, "--db", str(tmp_path / "log.db"), "--batch-window-ms", "1000")
    answers: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{server.url}/v1/predict", files={"image": upload(confident_shoe)}, timeout=30))
    )
    request.start()
    time.sleep(0.4)
    server.stop(signal.SIGTERM)
    request.join(timeout=30)
    assert answers and answers[0].status_code == 200 and answers[0].json()["predicted"] == "shoes"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_a_missing_model_is_a_clean_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vitrina", "serve", str(tmp_path / "nowhere"), "--port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nowhere" in result.stderr and "model not found" in result.stderr and "Traceback" not in result.stderr


def _start_workers(runs: Runs, tmp_path: Path, tries: int = 3) -> RunningServer:
    """Two workers on a fixed port (several cannot share port 0); another port where the one
    chosen was taken before the server bound it (test files run in parallel)."""
    for attempt in range(tries):
        server = RunningServer.__new__(RunningServer)
        command = [sys.executable, "-m", "vitrina", "serve", str(runs.main), "--port", str(free_port()), "--backend", "torch",
                   "--workers", "2", "--db", str(tmp_path / "log.db")]
        server.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        server.output = []
        try:
            server.url = server._read_url()
            server._wait_ready()
            return server
        except AssertionError:
            server.stop()
            if attempt == tries - 1 or not any(s in "".join(server.output) for s in ("cannot listen on", "Address already in use")):
                raise
    raise AssertionError("unreachable")


def test_several_workers_serve_one_port(runs: Runs, tmp_path: Path, confident_shoe: Path) -> None:
    server = _start_workers(runs, tmp_path)
    try:
        for _ in range(4):
            response = httpx.post(f"{server.url}/v1/check", files={"image": upload(confident_shoe)}, data={"category": "shoes"})
            assert response.json()["verdict"] == "match"
        assert len(httpx.get(f"{server.url}/v1/checks").json()["checks"]) == 4  # one log shared by the workers
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_a_clear_error_before_any_url_is_announced(runs: Runs, tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "vitrina", "serve", str(runs.main), "--port", str(port), "--backend", "torch",
                                 "--workers", workers, "--db", str(tmp_path / "log.db")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr
    assert "in a browser" not in result.stdout
