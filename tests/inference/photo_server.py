"""A real HTTP server on the loopback interface that serves photos, and misbehaves on purpose.

Routes: ``/photo/N`` (the Nth photo), ``/redirect/N`` (302 to ``/photo/N``), ``/loop`` (a
redirect to itself), ``/missing`` (404), ``/stall`` (no answer for a while), ``/trickle`` (a
photo one byte at a time), ``/huge`` (announces more bytes than any limit), ``/endless`` (no
length, bytes without end), ``/text`` (a web page, not a photo), ``/flaky/K/N`` (503 for the
first K requests, then photo N), ``/busy`` (always 503), ``/slow/N`` (photo N after 0.2 s).
``in_flight_max`` is the most ``/slow/`` requests it held at once, counted during their wait, while
the client is surely still waiting (counting until the handler returns would overlap the client's
next request by a race).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PhotoServer:
    def __init__(self, photos: Sequence[bytes]):
        self.photos = list(photos)
        self.requests: Counter[str] = Counter()
        self.in_flight = self.in_flight_max = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, route: str) -> str:
        return f"{self.base}/{route}"

    def __enter__(self) -> PhotoServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                with owner.lock:
                    owner.requests[self.path] += 1
                    count = owner.requests[self.path]
                try:
                    self.route(self.path.split("?")[0].strip("/").split("/"), count)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should for the slow routes

            def route(self, parts: list[str], count: int) -> None:
                kind = parts[0]
                if kind == "photo":
                    self.send(owner.photos[int(parts[1])])
                elif kind == "slow":
                    with owner.lock:
                        owner.in_flight += 1
                        owner.in_flight_max = max(owner.in_flight_max, owner.in_flight)
                    time.sleep(0.2)
                    with owner.lock:
                        owner.in_flight -= 1
                    self.send(owner.photos[int(parts[1])])
                elif kind == "redirect":
                    self.redirect(f"/photo/{parts[1]}")
                elif kind == "loop":
                    self.redirect("/loop")
                elif kind == "flaky":
                    self.send(owner.photos[int(parts[2])]) if count > int(parts[1]) else self.send_error(503, "try later")
                elif kind == "busy":
                    self.send_error(503, "try later")
                elif kind == "stall":
                    owner.stop.wait(5)
                    self.send(owner.photos[0])
                elif kind == "trickle":
                    self.trickle(owner.photos[0])
                elif kind == "huge":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(50 * 2**20))
                    self.end_headers()
                    self.wfile.write(owner.photos[0])
                elif kind == "endless":
                    self.endless()
                elif kind == "text":
                    self.send(b"<html><body>Sorry, this product was removed.</body></html>", "text/html")
                else:
                    self.send_error(404, "no such photo")

            def send(self, body: bytes, kind: str = "image/jpeg") -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def redirect(self, where: str) -> None:
                self.send_response(302)
                self.send_header("Location", where)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def trickle(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    if owner.stop.wait(0.05):
                        return
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()

            def endless(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()  # no length: the body runs until the connection closes
                block = b"\xff" * 65536
                while not owner.stop.is_set():
                    self.wfile.write(block)

        return Handler
