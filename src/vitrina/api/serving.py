"""The public API of serving: the REST API and the upload-check page over HTTP."""
from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from vitrina.errors import ConfigError
from vitrina.inference.predictor import default_threads
from vitrina.serving.app import SETTINGS_ENV, create_app
from vitrina.serving.connections import GuardedProtocol
from vitrina.serving.security import load_api_keys
from vitrina.serving.model import load_model
from vitrina.serving.settings import ServeSettings

# Seconds a stopping server waits for requests in flight before closing their connections.
GRACEFUL_SHUTDOWN_SECONDS = 30


@dataclass
class ServeInfo:
    """What a starting server tells its caller: where it listens and what it serves."""

    url: str
    model_name: str
    model_version: str
    classes: int
    backend: str
    database: str
    authentication: bool
    rate_limit: float
    workers: int


def _listening_socket(host: str, port: int, family: socket.AddressFamily | None = None) -> socket.socket:
    """A socket listening on ``host:port`` (``family``: the host's first address family unless
    given); a port in use or an address that cannot be bound is a clear error."""
    try:
        family = family or socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port in use before the URL is announced, where uvicorn binds the port itself next:
    as an IPv6 address where ``host`` has a colon, else IPv4, so the same here."""
    _listening_socket(host, port, socket.AF_INET6 if ":" in host else socket.AF_INET).close()


def _browser_url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/"


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    on_ready: Callable[[ServeInfo], None] | None = None,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve a run folder or exported ``.onnx`` model over HTTP until interrupted.

    ``options`` are :class:`~vitrina.serving.settings.ServeSettings` fields (``database``,
    ``api_keys_file``, ``rate_limit``, ``max_batch``, ``reload_interval``, ``header_timeout``,
    ``max_connections``, ``trusted_proxies``, ...). The model is
    loaded before the port opens, so a bad model fails here with a clear error; ``on_ready`` then
    receives the URL to open. ``port=0`` picks a free port. Ctrl+C or SIGTERM stop the server once
    the requests in flight are answered. With ``workers`` above 1, each worker process has its own
    model and micro-batcher and the cores are shared between them.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and port == 0:
        raise ConfigError("several workers need a fixed --port")
    if options.get("threads") is None and workers > 1:
        options["threads"] = max(1, default_threads() // workers)
    try:
        settings = ServeSettings(model=str(model), **options)
    except TypeError as exc:
        raise ConfigError(f"unknown server option: {exc}") from None
    keys = load_api_keys(settings.api_keys_file)
    loaded = load_model(settings)  # a run folder's ONNX export happens once, before any worker starts
    common: dict[str, Any] = {
        "host": host, "port": port, "log_level": log_level, "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        # Header deadline and connection limit; a partial (not a subclass made here) so worker processes can unpickle it.
        "http": functools.partial(GuardedProtocol, header_timeout=settings.header_timeout, max_connections=settings.max_connections),
        # X-Forwarded-For is believed only from --trusted-proxies, by the app itself (uvicorn would trust any local peer).
        "proxy_headers": False,
    }

    def ready(bound_port: int) -> None:
        if on_ready is not None:
            on_ready(ServeInfo(
                url=_browser_url(host, bound_port), model_name=loaded.name, model_version=loaded.version,
                classes=len(loaded.classes), backend=loaded.predictor.backend_name, database=settings.database_target(),
                authentication=bool(keys), rate_limit=settings.rate_limit, workers=workers,
            ))

    if workers == 1:
        sock = _listening_socket(host, port)
        server = uvicorn.Server(uvicorn.Config(create_app(settings, loaded), **common))
        ready(sock.getsockname()[1])
        server.run(sockets=[sock])
        return
    os.environ[SETTINGS_ENV] = settings.to_json()
    _check_port_free(host, port)
    ready(port)
    uvicorn.run("vitrina.serving.app:create_app_from_environment", factory=True, workers=workers, **common)
