"""Connections on the real server: idle and slow clients are cut off in time, the number of connections is bounded."""
from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serving.conftest import RunningServer, Runs, upload

pytestmark = pytest.mark.slow
TIMEOUT = 2.0
PARTIAL_HEADERS = b"GET /v1/model HTTP/1.1\r\nHost: vitrina\r\nX-Slow: "
PARTIAL_BODY = (b"POST /v1/check HTTP/1.1\r\nHost: vitrina\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"category\"\r\n\r\nhat\r\n")
UNREAD_BODY = b"POST /healthz HTTP/1.1\r\nHost: vitrina\r\nContent-Length: 100000\r\n\r\nnever finished"  # 405 at once


def address(server: RunningServer) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def wait_closed(sockets: list[tuple[socket.socket, float]], timeout: float) -> tuple[dict[int, float], dict[int, bytes]]:
    """Seconds from opening to the server closing each socket (absent: still open), and what each received."""
    selector = selectors.DefaultSelector()
    for index, (sock, _) in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    closed: dict[int, float] = {}
    received: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            index = key.data
            try:
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            except ConnectionError:
                data = b""
            if data:
                received[index] = received.get(index, b"") + data
                continue
            closed[index] = time.monotonic() - sockets[index][1]
            selector.unregister(key.fileobj)
    selector.close()
    return closed, received


def test_idle_and_slow_connections_are_closed_in_time_while_checks_go_on(
    runs: Runs, tmp_path: Path, confident_shoe: Path, start_server: Callable[..., RunningServer]
) -> None:
    server = start_server(runs.main, "--db", str(tmp_path / "log.db"), "--header-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT))
    check = {"files": {"image": upload(confident_shoe)}, "data": {"category": "shoes"}, "timeout": 30}
    assert httpx.post(f"{server.url}/v1/check", **check).status_code == 200  # warm
    sockets = []
    for number in range(300):
        sock = socket.create_connection(address(server), timeout=10)
        if number % 4 == 1:
            sock.sendall(PARTIAL_HEADERS)  # the headers never end
        elif number % 4 == 2:
            sock.sendall(PARTIAL_BODY)  # the body never ends
        elif number % 4 == 3:
            sock.sendall(UNREAD_BODY)  # answered before its body, which never ends either
        sockets.append((sock, time.monotonic()))
    answers: list[httpx.Response] = []
    ordinary = threading.Thread(target=lambda: answers.append(httpx.post(f"{server.url}/v1/check", **check)))
    ordinary.start()
    try:
        closed, received = wait_closed(sockets, timeout=TIMEOUT + 10)
    finally:
        ordinary.join(timeout=30)
        for sock, _ in sockets:
            sock.close()
    assert answers and answers[0].status_code == 200 and answers[0].json()["verdict"] == "match"
    still_open = len(sockets) - len(closed)
    assert still_open == 0, f"{still_open} of {len(sockets)} connections still open after {TIMEOUT + 10:g} s"
    slowest = max(closed.values())
    assert slowest <= TIMEOUT + 1, f"the slowest connection was closed after {slowest:.2f} s"
    # Clients that sent part of a request are told why (408, JSON); silent ones are simply closed.
    for number in (1, 2):
        assert received[number].startswith(b"HTTP/1.1 408 "), received.get(number)
        assert b'"error":"request_timeout"' in received[number] and b"application/json" in received[number]
    assert received[3].startswith(b"HTTP/1.1 405 ") and b"connection: close" in received[3].lower()
    assert 0 not in received


def test_connections_beyond_the_limit_are_refused_with_json(runs: Runs, tmp_path: Path, start_server: Callable[..., RunningServer]) -> None:
    server = start_server(runs.main, "--db", str(tmp_path / "log.db"), "--max-connections", "20")
    held = [socket.create_connection(address(server), timeout=10) for _ in range(20)]
    try:
        time.sleep(0.5)  # all accepted
        refused = httpx.get(f"{server.url}/healthz", timeout=10)
        assert refused.status_code == 503 and refused.json()["error"] == "too_many_connections"
        assert refused.headers["retry-after"] == "1"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200

