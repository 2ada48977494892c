"""Every refusal is JSON with a clear message: 401, 413, 415, 422, 429, 503."""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.serving.conftest import jpeg_bytes, upload
from vitrina.inference.predictor import Predictor
from vitrina.serving.model import LoadedModel
from vitrina.serving.security import API_KEYS_ENV


def assert_error(response, status: int, code: str, *words: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# ----------------------------------------------------------------------------- 413
def test_a_photo_over_the_size_limit_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.01)
    big = jpeg_bytes(400, 300)  # noise compresses badly: about 100 KB
    response = client.post("/v1/predict", files={"image": ("big.jpg", big, "image/jpeg")})
    assert_error(response, 413, "payload_too_large", "big.jpg", "0.01 MB")


def test_a_request_over_the_body_limit_is_refused_before_it_is_read(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_upload_mb=0.01, max_photos=1)
    body = b"x" * (2 * 1024 * 1024)
    response = client.post("/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "payload_too_large", "larger than")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(64):
            yield b"y" * 65536

    response = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "payload_too_large")


def test_too_many_photos_in_one_request_are_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_photos=2)
    files = [("image", (f"{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(3)]
    assert_error(client.post("/v1/predict/batch", files=files), 413, "payload_too_large", "3 photos", "at most 2")


# ----------------------------------------------------------------------------- 415
@pytest.mark.parametrize(
    ("name", "data", "content_type", "words"),
    [
        ("notes.txt", b"hello", "text/plain", ("text/plain",)),
        ("drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", ("image/svg+xml",)),
        ("scan.pdf", b"%PDF-1.7\n...", "application/octet-stream", ("PDF",)),
        ("photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "image/heic", ("image/heic",)),
    ],
)
def test_unsupported_media_types_are_refused(client: TestClient, name: str, data: bytes, content_type: str, words: tuple[str, ...]) -> None:
    response = client.post("/v1/check", files={"image": (name, data, content_type)}, data={"category": "hat"})
    assert_error(response, 415, "unsupported_media_type", name, *words)


def test_a_body_that_is_not_a_multipart_form_is_refused(client: TestClient) -> None:
    assert_error(client.post("/v1/check", json={"category": "hat"}), 415, "unsupported_media_type", "multipart/form-data")
    raw = client.post("/v1/predict", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
    assert_error(raw, 415, "unsupported_media_type", "image/jpeg")


# ----------------------------------------------------------------------------- 422
def test_corrupt_and_non_image_data_are_refused(client: TestClient) -> None:
    truncated = jpeg_bytes(200, 200)[:1500]
    response = client.post("/v1/predict", files={"image": ("cut.jpg", truncated, "image/jpeg")})
    assert_error(response, 422, "invalid_image", "cut.jpg", "truncated")
    response = client.post("/v1/predict", files={"image": ("noise.jpg", b"\x13\x37" * 400, "image/jpeg")})
    assert_error(response, 422, "invalid_image", "noise.jpg", "not an image")
    response = client.post("/v1/predict", files={"image": ("empty.jpg", b"", "image/jpeg")})
    assert_error(response, 422, "invalid_image", "empty")


def test_a_photo_with_too_many_pixels_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_pixels=10_000)
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (250, 250, 250)).save(buffer, "PNG")
    response = client.post("/v1/predict", files={"image": ("wide.png", buffer.getvalue(), "image/png")})
    assert_error(response, 422, "invalid_image", "too many pixels", "200x100", "10,000")


def test_missing_fields_are_named(client: TestClient, confident_shoe: Path) -> None:
    assert_error(client.post("/v1/check", files={"image": upload(confident_shoe)}), 422, "invalid_request", "missing field 'category'")
    response = client.post("/v1/check", data={"category": "hat"}, files={"other": ("x.jpg", b"x", "image/jpeg")})
    assert_error(response, 422, "invalid_request", "missing field 'image'")


def test_an_unknown_category_lists_the_known_ones(client: TestClient, confident_shoe: Path) -> None:
    response = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "sofa"})
    assert_error(response, 422, "unknown_category", "'sofa'", "shoes", "t-shirt")


def test_bad_query_values_and_unknown_routes_are_json_too(client: TestClient) -> None:
    assert_error(client.get("/v1/checks?verdict=maybe"), 422, "invalid_request", "verdict")
    assert_error(client.get("/v1/nothing"), 404, "not_found")


# ----------------------------------------------------------------------------- 401 and 429
def test_api_keys_are_required_when_configured(
    make_client: Callable[..., TestClient], confident_shoe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEYS_ENV, "alpha-key, beta-key")
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# moderators\ngamma-key\n")
    client = make_client(api_keys_file=str(keys_file))
    files = {"image": upload(confident_shoe)}
    missing = client.post("/v1/check", files=files, data={"category": "hat"})
    assert_error(missing, 401, "unauthorized", "API key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(client.get("/v1/model", headers={"X-API-Key": "wrong"}), 401, "unauthorized", "not valid")
    assert client.get("/v1/model", headers={"X-API-Key": "beta-key"}).status_code == 200
    assert client.get("/v1/model", headers={"Authorization": "Bearer gamma-key"}).status_code == 200
    for open_path in ("/healthz", "/readyz", "/", "/docs"):
        assert client.get(open_path).status_code == 200, open_path


def test_the_rate_limit_answers_429_with_retry_after(make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, "one,two")
    client = make_client(rate_limit=0.5, rate_burst=2)
    one = {"X-API-Key": "one"}
    assert [client.get("/v1/model", headers=one).status_code for _ in range(2)] == [200, 200]
    limited = client.get("/v1/model", headers=one)
    assert_error(limited, 429, "rate_limited", "0.5 requests a second")
    assert int(limited.headers["retry-after"]) >= 1
    assert client.get("/v1/model", headers={"X-API-Key": "two"}).status_code == 200  # each client has its own bucket


# ----------------------------------------------------------------------------- 503
def test_a_full_queue_answers_503_with_retry_after(make_client: Callable[..., TestClient], loaded: LoadedModel, confident_shoe: Path) -> None:
    fast = loaded.predictor

    def slow_backend(batch):  # type: ignore[no-untyped-def]
        time.sleep(0.4)
        return fast.backend(batch)

    slow = LoadedModel(Predictor(slow_backend, fast.description, fast.source), loaded.version, loaded.fingerprint, loaded.loaded_at)
    client = make_client(model=slow, queue_limit=2, max_batch=1)
    responses = []

    def post() -> None:
        responses.append(client.post("/v1/predict", files={"image": upload(confident_shoe)}))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and 503 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert_error(refused, 503, "overloaded", "limit 2")
    assert refused.headers["retry-after"] == "1"
    assert "vitrina_overload_rejections_total" in client.get("/metrics").text


@pytest.mark.parametrize(
    "url",
    [
        "/v1/checks?before=9223372036854775808",
        "/v1/checks?before=99999999999999999999",
        "/v1/checks?before=0",
        "/v1/checks?limit=-1",
        "/v1/checks?limit=0",
        "/v1/checks?limit=99999999999999999999",
        "/v1/checks/99999999999999999999/photos/0",
        "/v1/checks/9223372036854775808/photos/0",
        "/v1/checks/1/photos/9223372036854775808",
        "/v1/checks/1/photos/-1",
        "/v1/checks/-5/photos/0",
    ],
)
def test_out_of_range_integers_are_422_not_500(client: TestClient, url: str) -> None:
    assert_error(client.get(url), 422, "invalid_request")


def test_the_largest_ids_are_still_valid(client: TestClient) -> None:
    largest = 2**63 - 1
    assert client.get(f"/v1/checks?before={largest}").json() == {"checks": [], "next_before": None, "next_after": None}
    assert client.get(f"/v1/checks?after={largest}").json() == {"checks": [], "next_before": None, "next_after": largest}
    assert_error(client.get("/v1/checks?after=1&before=5"), 422, "invalid_request", "not both")
    assert_error(client.get(f"/v1/checks/{largest}/photos/0"), 404, "not_found")
