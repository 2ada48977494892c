"""Admission by decoding cost: the pixels being decoded at once, all requests together, are bounded.

A photo's cost is read from its header before anything is decoded (PIL opens lazily): its pixels,
or for a JPEG the pixels of the reduced size it decodes at (draft mode). A request is admitted
only when the whole cost of its photos fits in what is left of the budget; otherwise it gets 503
with ``Retry-After`` at once, so a flood of huge, highly compressible photos costs the server at
most the budget's worth of work while ordinary photos keep their latency. A request whose photos
alone need more than the whole budget gets 413.
"""
from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from vitrina.serving.errors import Overloaded, PayloadTooLarge
from vitrina.serving.metrics import ServiceMetrics

# Photos costing more than this decode in their own threads, so they never hold up ordinary ones.
LARGE_PHOTO_PIXELS = 4_000_000
# Their thread runs at this niceness: a stream of them takes the CPU ordinary checks leave idle.
LARGE_DECODE_NICENESS = 10
# ... and for at most this share of the time (CPU seconds per second, with a burst of a few
# seconds): a core busy decoding large photos slows the other (shared caches, memory, SMT), so
# a stream of them gets 503 + Retry-After beyond the share instead of taking a core.
LARGE_DECODE_SHARE = 0.25
LARGE_DECODE_BURST_SECONDS = 2.0

T = TypeVar("T")


class DecodeBudget:
    """Pixels being decoded and time spent on large photos, shared by all requests of one server
    process (used from the event loop only)."""

    def __init__(self, limit: int, metrics: ServiceMetrics):
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0
        self.large_seconds = LARGE_DECODE_BURST_SECONDS  # a bucket of decoding seconds, refilled at LARGE_DECODE_SHARE
        self._refilled = time.monotonic()

    def reserve(self, pixels: int, large: bool = False) -> None:
        """Take ``pixels`` from the budget, or raise 413 (more than the whole budget) or 503 (not
        enough left now, or large photos have had their share of the time)."""
        if large:
            self._admit_large()
        if pixels > self.limit:
            raise PayloadTooLarge(
                f"these photos need {pixels:,} pixels decoded; this server decodes at most {self.limit:,} at once: "
                "send fewer or smaller photos"
            )
        if self.in_flight + pixels > self.limit:
            self.metrics.overloaded.inc()
            raise Overloaded(
                f"the server is busy decoding large photos ({self.in_flight:,} pixels in progress, limit {self.limit:,}); "
                "retry shortly",
                {"Retry-After": "1"},
            )
        self.in_flight += pixels
        self.metrics.decode_pixels.set(self.in_flight)

    def _admit_large(self) -> None:
        now = time.monotonic()
        self.large_seconds = min(LARGE_DECODE_BURST_SECONDS, self.large_seconds + (now - self._refilled) * LARGE_DECODE_SHARE)
        self._refilled = now
        if self.large_seconds <= 0:
            self.metrics.overloaded.inc()
            wait = math.ceil(-self.large_seconds / LARGE_DECODE_SHARE) or 1
            raise Overloaded(
                f"the server has spent its share of time on large photos; retry in {wait} s or send smaller photos",
                {"Retry-After": str(wait)},
            )

    def charge_large(self, seconds: float) -> None:
        """Take the CPU time a large photo's decoding used from the large photos' share."""
        self.large_seconds -= seconds

    def release(self, pixels: int) -> None:
        """Give back the cost of a photo whose decoding ended (done, failed or never started)."""
        self.in_flight -= pixels
        self.metrics.decode_pixels.set(self.in_flight)


def lower_priority() -> None:
    """Run the calling thread at a lower CPU priority (Linux schedules threads one by one; elsewhere a no-op)."""
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LARGE_DECODE_NICENESS)
        except OSError:
            pass


def timed(function: Callable[..., T], *args: object) -> tuple[T, float]:
    """``function(*args)`` and the CPU seconds the calling thread spent on it."""
    started = time.thread_time()
    result = function(*args)
    return result, time.thread_time() - started
