"""Admission by decoding cost: the pixels being decoded at once, all requests together, are bounded.

A photo's cost is read from its header before anything is decoded (PIL opens lazily): its pixels,
or for a JPEG the pixels of the reduced size it decodes at (draft mode). A request is admitted
only when the whole cost of its photos fits in what is left of the budget; otherwise it gets 503
with ``Retry-After`` at once, so a flood of huge, highly compressible photos costs the server at
most the budget's worth of work while ordinary photos keep their latency. A request whose photos
alone need more than the whole budget gets 413.
"""
from __future__ import annotations

from vitrina.serving.errors import Overloaded, PayloadTooLarge
from vitrina.serving.metrics import ServiceMetrics

# Photos costing more than this decode in their own threads, so they never hold up ordinary ones.
LARGE_PHOTO_PIXELS = 4_000_000


class DecodeBudget:
    """Pixels being decoded, shared by all requests of one server process (used from the event loop only)."""

    def __init__(self, limit: int, metrics: ServiceMetrics):
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0

    def reserve(self, pixels: int) -> None:
        """Take ``pixels`` from the budget, or raise 413 (more than the whole budget) or 503 (not enough left now)."""
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

    def release(self, pixels: int) -> None:
        """Give back the cost of a photo whose decoding ended (done, failed or never started)."""
        self.in_flight -= pixels
        self.metrics.decode_pixels.set(self.in_flight)
