"""Access to the API: optional API keys and a per-client rate limit.

Keys come from the environment variable ``VITRINA_API_KEYS`` (comma-separated) and/or a file of
one key per line (``#`` starts a comment), each optionally named: ``name:key`` (the name says who
asked for a check and who reviewed it; an unnamed key is called ``key-`` and 8 hex digits of its hash). When any key is configured, every ``/v1/`` and ``/v2/models/`` request,
and ``/metrics`` unless it is made public, must present one as ``X-API-Key: KEY`` or
``Authorization: Bearer KEY`` (401 otherwise); a client (address) that fails more than
``FAILED_AUTHENTICATIONS_PER_MINUTE`` times a minute gets 429 until its failures age, whatever
key it sends. The rate limit is a token bucket per client (its API key, else its IP address):
``rate`` requests a second on average with bursts of ``burst`` (429 with ``Retry-After`` beyond).
All are checked before the request body is read, so a rejected upload costs almost nothing.
The address is the connection's peer; ``X-Forwarded-For`` counts only from trusted proxies
(see :func:`~vitrina.serving.app.create_app`).
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from vitrina.errors import ConfigError

API_KEYS_ENV = "VITRINA_API_KEYS"
PROTECTED_PREFIXES = ("/v1/", "/v2/models/")  # the Open Inference Protocol's health routes stay open, as /healthz
METRICS_PATH = "/metrics"
# Failed authentications one address may make a minute (a token bucket: the burst, then one every 6 s).
FAILED_AUTHENTICATIONS_PER_MINUTE = 10
# Clients remembered by the rate limiter; the least recently seen are forgotten beyond this.
MAX_TRACKED_CLIENTS = 10_000
KEY_NAME = r"[A-Za-z0-9_.@-]{1,64}"  # a key's name, before the colon of a name:key entry
KEY_NAME_STATE = "api_key_name"  # the request state's attribute holding the name of the key that authenticated it
ANONYMOUS = "anonymous"  # who asks when no keys are configured


def _named(entry: str) -> list[tuple[str, str]]:
    """(key, name) pairs of a ``name:key`` or a bare ``key`` entry. A ``name:key`` entry is also
    valid as a whole, under the same name, so a key written before keys had names keeps working."""
    bare = "key-" + hashlib.sha256(entry.encode()).hexdigest()[:8]
    name, colon, key = entry.partition(":")
    if colon and key.strip() and re.fullmatch(KEY_NAME, name.strip()):
        return [(key.strip(), name.strip()), (entry, name.strip())]
    return [(entry, bare)]


def load_api_keys(file: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The configured keys and their names (key -> name): ``VITRINA_API_KEYS`` plus the lines of
    ``file``; empty means no authentication."""
    keys = dict(pair for entry in environ.get(API_KEYS_ENV, "").split(",") if entry.strip() for pair in _named(entry.strip()))
    if file is not None:
        path = Path(file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"API keys file {path}: {exc.strerror or exc}") from None
        from_file = dict(pair for entry in (line.split("#", 1)[0].strip() for line in lines) if entry for pair in _named(entry))
        if not from_file:
            raise ConfigError(f"API keys file {path} holds no key (one key per line)")
        keys |= from_file
    return keys


def presented_key(headers: Headers) -> str | None:
    """The key a request carries in ``X-API-Key`` or ``Authorization: Bearer``."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class ApiKeys:
    """The valid keys and their names, compared in constant time."""

    def __init__(self, keys: Mapping[str, str] | Iterable[str]):
        named = keys.items() if isinstance(keys, Mapping) else (pair for key in keys for pair in _named(key))
        self._digests = [(hashlib.sha256(key.encode()).digest(), name) for key, name in named]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def name_of(self, key: str | None) -> str | None:
        """The name of a valid key; None for an invalid or missing one."""
        if key is None:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for known, name in self._digests:  # every entry compared: the time does not tell which matched
            if hmac.compare_digest(digest, known):
                found = name
        return found

    def valid(self, key: str | None) -> bool:
        return self.name_of(key) is not None


class RateLimiter:
    """A token bucket per client: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int | None = None):
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, math.ceil(rate)))
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, updated)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, client: str, now: float | None = None) -> float:
        """Take a token: 0.0 when allowed, else the seconds until one is available."""
        return self._take(client, now, take=True)

    def waiting(self, client: str, now: float | None = None) -> float:
        """The seconds until ``client`` has a token (0.0: it has one now), without taking it."""
        return self._take(client, now, take=False)

    def _take(self, client: str, now: float | None, take: bool) -> float:
        now = time.monotonic() if now is None else now
        tokens, updated = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0 if take else 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


def client_identity(key: str | None, scope: Scope) -> str:
    """Who a request counts against: its API key (hashed, never stored as is), else its address."""
    if key is not None:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    client = scope.get("client")
    return "ip:" + (client[0] if client else "unknown")


class AccessGate:
    """ASGI middleware: 401 without a valid key (when keys are set), 429 after too many failures or over the rate limit."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, limiter: RateLimiter, metrics_public: bool = False):
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.protect_metrics = keys.enabled and not metrics_public
        self.failures = RateLimiter(FAILED_AUTHENTICATIONS_PER_MINUTE / 60, FAILED_AUTHENTICATIONS_PER_MINUTE)

    def _protected(self, scope: Scope) -> bool:
        path = scope["path"]
        return path.startswith(PROTECTED_PREFIXES) or (self.protect_metrics and path.rstrip("/") == METRICS_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        refusal = self._authentication_refusal(key, scope) if self.keys.enabled else None
        if refusal is None and self.limiter.enabled:
            wait = self.limiter.acquire(client_identity(key if self.keys.enabled else None, scope))
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                detail = f"rate limit of {self.limiter.rate:g} requests a second exceeded; retry in {retry_after} s"
                refusal = JSONResponse({"error": "rate_limited", "detail": detail}, 429, {"Retry-After": str(retry_after)})
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authentication_refusal(self, key: str | None, scope: Scope) -> JSONResponse | None:
        """None for a valid key; else 401, or 429 for an address with too many failures (whatever its key now)."""
        address = client_identity(None, scope)
        wait = self.failures.waiting(address)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            detail = (f"too many failed authentications from this address (more than {FAILED_AUTHENTICATIONS_PER_MINUTE} "
                      f"a minute); retry in {retry_after} s")
            return JSONResponse({"error": "too_many_failed_authentications", "detail": detail}, 429, {"Retry-After": str(retry_after)})
        name = self.keys.name_of(key)
        if name is not None:
            scope.setdefault("state", {})[KEY_NAME_STATE] = name  # who asks: recorded with checks and reviews
            return None
        self.failures.acquire(address)
        message = "a valid API key is required: send it as X-API-Key or Authorization: Bearer"
        if key is not None:
            message = "this API key is not valid"
        return JSONResponse({"error": "unauthorized", "detail": message}, 401, {"WWW-Authenticate": "Bearer"})
