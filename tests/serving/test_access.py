"""Access with API keys: /metrics, guessing keys, and whose address counts behind a proxy."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import RunningServer, Runs, serve_settings
from tests.serving.test_errors import assert_error
from vitrina.errors import ConfigError
from vitrina.serving.app import create_app
from vitrina.serving.model import LoadedModel
from vitrina.serving.security import API_KEYS_ENV
from vitrina.serving.settings import ServeSettings


@contextmanager
def client_at(address: str, runs: Runs, loaded: LoadedModel, tmp_path: Path, **options: object) -> Iterator[TestClient]:
    """An in-process app whose requests all come from ``address`` (the peer, before any forwarded header)."""
    with TestClient(create_app(serve_settings(runs.main, tmp_path, **options), loaded), client=(address, 40000)) as client:
        yield client


def test_metrics_need_a_key_when_keys_are_on(make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, "alpha-key")
    client = make_client()
    assert_error(client.get("/metrics"), 401, "unauthorized", "API key")
    assert_error(client.get("/metrics", headers={"X-API-Key": "wrong"}), 401, "unauthorized", "not valid")
    scraped = client.get("/metrics", headers={"Authorization": "Bearer alpha-key"})
    assert scraped.status_code == 200 and "vitrina_verdicts" in scraped.text
    assert make_client(metrics_public=True).get("/metrics").status_code == 200  # --metrics-public
    for open_path in ("/healthz", "/readyz", "/", "/moderation"):
        assert client.get(open_path).status_code == 200, open_path


def test_metrics_stay_public_without_keys(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 200


def test_repeated_failed_authentications_are_rate_limited(
    runs: Runs, loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEYS_ENV, "alpha-key")
    with client_at("198.51.100.20", runs, loaded, tmp_path) as guesser:
        statuses = [guesser.get("/v1/model", headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(40)]
        assert statuses == [401] * 10 + [429] * 30
        limited = guesser.get("/v1/model", headers={"X-API-Key": "guess-x"})
        assert_error(limited, 429, "too_many_failed_authentications", "failed")
        assert int(limited.headers["retry-after"]) >= 1
        # Meanwhile even the right key is refused from there: guessing cannot succeed during the lockout.
        assert_error(guesser.get("/v1/model", headers={"X-API-Key": "alpha-key"}), 429, "too_many_failed_authentications")
        assert guesser.get("/healthz").status_code == 200
    with client_at("198.51.100.21", runs, loaded, tmp_path) as other:  # another client is not affected
        assert other.get("/v1/model", headers={"X-API-Key": "alpha-key"}).status_code == 200


def test_forwarded_addresses_count_only_from_trusted_proxies(runs: Runs, loaded: LoadedModel, tmp_path: Path) -> None:
    limits = {"rate_limit": 0.1, "rate_burst": 1, "trusted_proxies": "10.0.0.0/8, 192.0.2.1"}
    with client_at("10.1.2.3", runs, loaded, tmp_path, **limits) as proxy:
        rotating = [proxy.get("/v1/model", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(4)]
        assert rotating == [200] * 4  # a trusted proxy's clients each have their own bucket
        same = [proxy.get("/v1/model", headers={"X-Forwarded-For": "198.51.100.9, 10.0.0.7"}).status_code for _ in range(2)]
        assert same == [200, 429]  # the right-most address that is not a trusted proxy counts
    with client_at("192.0.2.50", runs, loaded, tmp_path, **limits) as direct:  # not a trusted proxy: its header is ignored
        rotating = [direct.get("/v1/model", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(3)]
        assert rotating == [200, 429, 429]


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert ServeSettings(model="m", trusted_proxies="127.0.0.1, 10.0.0.0/8, ::1").trusted_proxies
    for wrong in ("localhost", "10.0.0.0/33", "*"):
        with pytest.raises(ConfigError, match="trusted_proxies"):
            ServeSettings(model="m", trusted_proxies=wrong)


@pytest.mark.slow
def test_a_rotated_x_forwarded_for_does_not_escape_the_rate_limit(runs: Runs, tmp_path: Path, start_server: Callable[..., RunningServer]) -> None:
    server = start_server(runs.main, "--db", str(tmp_path / "log.db"), "--rate-limit", "0.1", "--burst", "2")
    statuses = [
        httpx.get(f"{server.url}/v1/model", headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(6)
    ]
    assert statuses == [200, 200, 429, 429, 429, 429]  # one client (the loopback peer), whatever the header says
