"""Decoding is admitted by its cost in pixels: large, highly compressible photos cannot stall ordinary checks."""
from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.serving.conftest import upload
from vitrina.serving import admission
from vitrina.serving.errors import Overloaded
from vitrina.serving.metrics import ServiceMetrics
from tests.serving.test_errors import assert_error


def image_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A flat image: it compresses to almost nothing, however many pixels it has."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 180, 160)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return image_bytes(6300, 6300)  # 39.7 million pixels, just under the default limit of 40 million, in about 130 KB


@pytest.mark.slow
def test_a_flood_of_large_photos_does_not_hold_up_ordinary_checks(client: TestClient, confident_shoe: Path, huge_png: bytes) -> None:
    def timed_check() -> float:
        started = time.perf_counter()
        response = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "shoes"})
        assert response.status_code == 200, response.text
        return time.perf_counter() - started

    quiet = statistics.median(timed_check() for _ in range(5))
    stop = threading.Event()
    answers = []

    def flood(photos: int) -> None:
        files = [("image", (f"huge{i}.png", huge_png, "image/png")) for i in range(photos)]
        while not stop.is_set():
            answers.append(client.post("/v1/predict/batch", files=files))

    threads = [threading.Thread(target=flood, args=(photos,)) for photos in (10, 10, 4, 4, 4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)  # the flood is under way
        busy = statistics.median(timed_check() for _ in range(5))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert busy < quiet + 3.0, f"ordinary checks took {busy:.2f} s under the flood, {quiet:.2f} s without"
    assert {r.status_code for r in answers} <= {200, 413, 503}
    assert all(r.headers["content-type"].startswith("application/json") for r in answers)
    assert_error(next(r for r in answers if r.status_code == 413), 413, "payload_too_large", "pixels")
    refused = [r for r in answers if r.status_code == 503]
    assert refused, "the flood was never refused"
    for answer in refused:  # the pixels in flight, or the large photos' share of the time
        assert_error(answer, 503, "overloaded")
        assert int(answer.headers["retry-after"]) >= 1


def test_large_photos_get_a_share_of_the_time_and_ordinary_ones_are_not_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(admission.time, "monotonic", lambda: clock[0])
    budget = admission.DecodeBudget(10**9, ServiceMetrics())
    budget.reserve(5_000_000, large=True)
    budget.charge_large(admission.LARGE_DECODE_BURST_SECONDS + 1.0)  # one second beyond the burst
    with pytest.raises(Overloaded) as refused:
        budget.reserve(5_000_000, large=True)
    assert refused.value.headers == {"Retry-After": str(round(1.0 / admission.LARGE_DECODE_SHARE))}
    budget.reserve(1_000_000)  # an ordinary photo is admitted meanwhile
    clock[0] += 1.01 / admission.LARGE_DECODE_SHARE
    budget.reserve(5_000_000, large=True)


def test_photos_that_alone_exceed_the_decode_budget_are_refused_at_once(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_pixels=12_000_000, max_decode_pixels=12_000_000)
    png = image_bytes(4000, 3000)
    files = [("image", (f"p{i}.png", png, "image/png")) for i in range(2)]
    assert_error(client.post("/v1/predict/batch", files=files), 413, "payload_too_large", "24,000,000 pixels", "12,000,000")
    assert client.post("/v1/predict/batch", files=files[:1]).status_code == 200
    # JPEG decodes at a reduced size (draft mode), so the same photos as JPEG cost a fraction of the budget.
    jpeg = image_bytes(4000, 3000, "JPEG")
    files = [("image", (f"p{i}.jpg", jpeg, "image/jpeg")) for i in range(10)]
    assert client.post("/v1/predict/batch", files=files).status_code == 200
    assert "vitrina_decode_pixels_in_flight 0.0" in client.get("/metrics").text
