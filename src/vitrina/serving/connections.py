"""Connections: uvicorn's HTTP/1.1 protocol (h11) with a deadline for headers and a bound on connections.

uvicorn closes a keep-alive connection that idles between requests, but a new connection that
sends nothing, or a request whose headers never end, it holds for ever; and its own connection
limit answers in plain text. :class:`GuardedProtocol`, used by ``vitrina serve``:

- closes a connection whose request line and headers have not all arrived ``header_timeout``
  seconds after it opened (or after its previous answer): silently when nothing came, with 408
  JSON when part of a request did;
- answers a connection beyond ``max_connections`` open ones with 503 JSON and ``Retry-After``
  as soon as its request arrives (closing it after ``REFUSED_GRACE`` s if none does), without
  handing anything to the app;
- answers bytes that are not HTTP with 400 JSON rather than plain text.

The body's deadline (``--body-timeout``) is kept while the app reads it, in ``RequestEnvelope``.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Seconds a connection over the limit is kept open for its request to arrive, to be answered 503.
REFUSED_GRACE = 1.0
REASONS = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}


def json_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written straight to the socket."""
    body = json.dumps({"error": code, "detail": detail}, separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection limit (see the module)."""

    def __init__(self, *args: Any, header_timeout: float = 10.0, max_connections: int = 1000, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refused = True
            self._timer = self.loop.call_later(min(REFUSED_GRACE, self.header_timeout), self.transport.close)
            return
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._answer_and_close(json_response(
                503, "too_many_connections", f"the server has {self.max_connections} connections open; retry shortly",
                {"Retry-After": "1"},
            ))
            return
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(json_response(400, "bad_request", f"not a valid HTTP request: {msg}"))

    # ----------------------------------------------------------------- the header deadline
    def _watch_headers(self) -> None:
        """Start the deadline when the connection begins to wait for a request's headers; stop it once they are in."""
        if self.transport is None or self.transport.is_closing():
            self._stop_timer()
        elif self.conn.their_state is h11.IDLE:
            if self._timer is None:  # not moved by more bytes: a client that trickles its headers is cut off too
                self._timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)
        else:
            self._stop_timer()

    def _headers_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        partial, _ = self.conn.trailing_data
        if partial:
            detail = f"the request headers did not arrive within {self.header_timeout:g} s"
            self._answer_and_close(json_response(408, "request_timeout", detail))
        else:
            self.transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _answer_and_close(self, response: bytes) -> None:
        self._stop_timer()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
