"""Photos named by ``http(s)`` URLs: downloaded with a deadline, retries with backoff, a size limit
and a bounded number of downloads at once.

Every failure is a :class:`FetchError` whose reason becomes the photo's error row; nothing here
stops a catalogue job. Timeouts, dropped connections, 429 and 5xx answers are retried (after
``backoff`` seconds, doubled each time, or the server's ``Retry-After`` when shorter than
``timeout``); other answers (404, 403, a redirect loop, a file over the limit) are final.
Redirects are followed (at most :data:`MAX_REDIRECTS`, to http(s) only).
"""
from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vitrina.errors import ConfigError
from vitrina.version import __version__

URL_SCHEMES = ("http://", "https://")
MAX_REDIRECTS = 5
READ_CHUNK = 1 << 16
MEBIBYTE = 1 << 20


def is_url(name: str) -> bool:
    """Whether ``name`` is an ``http://`` or ``https://`` URL rather than a file path."""
    return name[:8].lower().startswith(URL_SCHEMES)


@dataclass(frozen=True)
class FetchSettings:
    """How photos named by URLs are downloaded."""

    timeout: float = 20.0  # seconds for one attempt: connecting, waiting and the whole body
    retries: int = 2  # further attempts after a timeout, a dropped connection, 429 or 5xx
    backoff: float = 0.5  # seconds before the first retry, doubled for each further one
    max_mb: float = 20.0  # a larger photo is an error row, never read past this size
    concurrency: int = 8  # downloads at once, all workers together (at least one per worker)

    def __post_init__(self) -> None:
        for flag, value, low in (("--fetch-timeout", self.timeout, 0.001), ("--fetch-retries", self.retries, 0),
                                 ("--fetch-backoff", self.backoff, 0), ("--max-download-mb", self.max_mb, 0.001),
                                 ("--fetch-concurrency", self.concurrency, 1)):
            if value < low:
                raise ConfigError(f"{flag} must be at least {low:g}, got {value}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * MEBIBYTE)

    def per_worker(self, workers: int) -> int:
        """Downloads at once in each of ``workers`` processes, so that together they stay within ``concurrency``."""
        return max(1, self.concurrency // max(1, workers))


class FetchError(Exception):
    """A photo that could not be downloaded; ``reason`` is its error row's text."""

    def __init__(self, reason: str, retry: bool = False, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.wait = reason, retry, wait


class _RedirectsToWeb(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not is_url(newurl):
            raise FetchError(f"redirected to {newurl.split(':')[0]}:, not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_RedirectsToWeb())


def fetch(url: str, settings: FetchSettings) -> bytes:
    """The body of ``url``; raises :class:`FetchError` with a reason after the last attempt."""
    attempts = settings.retries + 1
    for attempt in range(attempts):
        try:
            return _get(url, settings)
        except FetchError as exc:
            if not exc.retry or attempt == attempts - 1:
                tried = f" (after {attempts} attempts)" if exc.retry and attempts > 1 else ""
                raise FetchError(f"download failed: {exc.reason}{tried}") from None
            pause = settings.backoff * 2**attempt
            time.sleep(min(exc.wait, settings.timeout) if exc.wait is not None else pause)
    raise AssertionError("unreachable")


def _get(url: str, settings: FetchSettings) -> bytes:
    deadline = time.monotonic() + settings.timeout
    request = urllib.request.Request(url, headers={"User-Agent": f"vitrina/{__version__}", "Accept": "image/*,*/*;q=0.5"})
    try:
        with _OPENER.open(request, timeout=settings.timeout) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > settings.max_bytes:
                raise FetchError(_too_large(int(length), settings))
            return _body(response, deadline, settings)
    except urllib.error.HTTPError as exc:
        retry = exc.code == 429 or exc.code >= 500
        if exc.code in (301, 302, 303, 307, 308):
            raise FetchError(f"too many redirects (more than {MAX_REDIRECTS})") from None
        raise FetchError(f"HTTP {exc.code} {exc.reason}", retry=retry, wait=_retry_after(exc.headers)) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, socket.gaierror):
            raise FetchError(f"unknown host ({reason.strerror})") from None
        if isinstance(reason, ssl.SSLError):
            raise FetchError(f"TLS failed: {reason.reason or reason}") from None
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise FetchError(f"timed out after {settings.timeout:g} s", retry=True) from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise FetchError(f"cannot connect: {text}", retry=isinstance(reason, OSError)) from None
    except (TimeoutError, socket.timeout):
        raise FetchError(f"timed out after {settings.timeout:g} s", retry=True) from None
    except http.client.InvalidURL as exc:
        raise FetchError(f"bad URL: {exc}") from None
    except ssl.SSLError as exc:
        raise FetchError(f"TLS failed: {exc.reason or exc}") from None
    except (ConnectionError, http.client.HTTPException) as exc:
        raise FetchError(f"connection broken: {type(exc).__name__}", retry=True) from None
    except ValueError as exc:  # a malformed URL
        raise FetchError(f"bad URL: {exc}") from None


def _body(response: http.client.HTTPResponse, deadline: float, settings: FetchSettings) -> bytes:
    """The body, read as it arrives, cut off past the size limit or the deadline (a trickling server)."""
    chunks, total = [], 0
    while True:
        if time.monotonic() > deadline:
            raise FetchError(f"timed out after {settings.timeout:g} s", retry=True)
        chunk = response.read1(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > settings.max_bytes:
            raise FetchError(_too_large(None, settings))
        chunks.append(chunk)


def _too_large(size: int | None, settings: FetchSettings) -> str:
    told = f"{size / MEBIBYTE:.1f} MB, " if size is not None else ""
    return f"too large ({told}the limit is {settings.max_mb:g} MB)"


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _: None)("Retry-After")
    return float(value) if isinstance(value, str) and value.strip().isdigit() else None


def sources(names: Sequence[str], settings: FetchSettings | None, threads: int) -> Iterator[tuple[str, str | bytes | FetchError]]:
    """(name, what to decode) in order: a file path as it is, a URL's downloaded bytes or its
    :class:`FetchError`. At most ``threads`` downloads run (or wait to be decoded) at once."""
    settings = settings or FetchSettings()
    if not any(is_url(name) for name in names):
        yield from ((name, name) for name in names)
        return
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="vitrina-fetch") as pool:
        ahead: deque[tuple[str, Future | None]] = deque()
        queued = iter(names)

        def queue_next() -> None:
            name = next(queued, None)
            if name is not None:
                ahead.append((name, pool.submit(_fetch_or_error, name, settings) if is_url(name) else None))

        for _ in range(max(1, threads)):
            queue_next()
        while ahead:
            name, download = ahead.popleft()
            queue_next()
            yield name, (name if download is None else download.result())


def _fetch_or_error(url: str, settings: FetchSettings) -> bytes | FetchError:
    try:
        return fetch(url, settings)
    except FetchError as exc:
        return exc
