"""The REST API on a real model: predictions, listing checks, the model, health, metrics, docs, pages."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from tests.serving.conftest import demo_photos, upload
from vitrina.serving.model import LoadedModel


def test_predict_returns_top_k_labels_with_the_model_version(client: TestClient, loaded: LoadedModel, confident_shoe: Path) -> None:
    response = client.post("/v1/predict?top_k=3", files={"image": upload(confident_shoe)})
    assert response.status_code == 200
    body = response.json()
    assert body["predicted"] == "shoes" and body["uncertain"] is False
    assert [entry["label"] for entry in body["top"]][0] == "shoes" and len(body["top"]) == 3
    probabilities = [entry["probability"] for entry in body["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert body["model_version"] == loaded.version == response.headers["x-model-version"]
    assert len(body["sha256"]) == 64


def test_batch_predicts_every_photo_in_order(client: TestClient) -> None:
    photos = [demo_photos(label)[0] for label in ("dress", "hat", "pants")]
    response = client.post("/v1/predict/batch", files=[("image", upload(path)) for path in photos])
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [p.name for p in photos]
    assert all(len(r["top"]) == 5 for r in results)


def test_check_says_match_or_mismatch_and_suggests_the_predicted_category(client: TestClient, confident_shoe: Path) -> None:
    match = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "shoes"}).json()
    assert match["verdict"] == "match" and match["suggestion"] is None and match["declared"] == "shoes"
    mismatch = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"}).json()
    assert mismatch["verdict"] == "mismatch" and mismatch["predicted"] == mismatch["suggestion"] == "shoes"
    assert mismatch["confidence"] >= mismatch["threshold"]
    assert mismatch["photos"][0]["predicted"] == "shoes" and mismatch["check_id"] == match["check_id"] + 1


def test_a_listing_is_judged_on_the_mean_of_its_photos(client: TestClient, loaded: LoadedModel) -> None:
    photos = [demo_photos("shoes")[1], demo_photos("dress")[0], demo_photos("dress")[1]]
    per_photo = client.post("/v1/predict/batch?top_k=10", files=[("image", upload(p)) for p in photos]).json()["results"]
    probs = np.array([[dict((t["label"], t["probability"]) for t in r["top"])[c] for c in loaded.classes] for r in per_photo])
    expected = loaded.classes[int(probs.mean(axis=0).argmax())]
    check = client.post("/v1/check", files=[("image", upload(p)) for p in photos], data={"category": "dress"}).json()
    assert check["predicted"] == expected
    assert abs(check["confidence"] - probs.mean(axis=0).max()) < 1e-4
    assert len(check["photos"]) == 3


def test_below_the_confidence_threshold_the_verdict_is_uncertain(make_client: Callable[..., TestClient], confident_shoe: Path) -> None:
    client = make_client(confidence=1.0)
    check = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"}).json()
    assert check["verdict"] == "uncertain" and check["suggestion"] is None and check["threshold"] == 1.0
    assert check["photos"][0]["uncertain"] is True
    logged = client.get("/v1/checks").json()["checks"][0]
    assert logged["verdict"] == "uncertain"


def test_model_endpoint_describes_the_model(client: TestClient, loaded: LoadedModel) -> None:
    model = client.get("/v1/model").json()
    assert model["name"] == "efficientnet_lite0" and model["version"] == loaded.version
    assert model["labels"] == loaded.classes and len(model["labels"]) == 10
    assert model["preprocess"]["input_size"] == 96
    assert 0 < model["thresholds"]["confidence"] < 1
    assert 0 <= model["metrics"]["accuracy"] <= 1
    assert model["limits"]["max_photos"] == 10


def test_health_readiness_and_prometheus_metrics(client: TestClient, confident_shoe: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"})
    text = client.get("/metrics").text
    assert 'vitrina_http_requests_total{method="POST",route="/v1/check",status="200"} 1.0' in text
    assert 'vitrina_verdicts_total{verdict="mismatch"} 1.0' in text
    assert 'vitrina_http_request_duration_seconds_count{route="/v1/check"} 1.0' in text
    for name in ("vitrina_queue_depth", "vitrina_photos_in_flight", "vitrina_batch_photos_bucket", "vitrina_model_info"):
        assert name in text


def test_openapi_docs_and_pages_are_served(client: TestClient) -> None:
    assert "swagger" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/check", "/v1/predict/batch", "/v1/model", "/v1/checks"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/check"]["post"]["requestBody"]["content"]
    page = client.get("/").text
    assert '<label for="category">' in page and 'aria-live="polite"' in page
    assert "Moderation log" in client.get("/moderation").text
    assert client.get("/static/app.js").status_code == 200


def test_moderation_log_lists_checks_by_verdict_with_paging(client: TestClient, confident_shoe: Path) -> None:
    for declared in ("hat", "shoes", "dress", "shoes"):
        client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": declared})
    mismatches = client.get("/v1/checks?verdict=mismatch").json()
    assert [c["declared"] for c in mismatches["checks"]] == ["dress", "hat"]  # newest first
    check = mismatches["checks"][0]
    assert check["predicted"] == "shoes" and check["model_version"] and check["time"].endswith("Z")
    assert check["photos"][0]["sha256"] == hashlib.sha256(confident_shoe.read_bytes()).hexdigest()
    assert check["photos"][0]["image_stored"] is True  # a flagged check keeps its photo for review (the default)
    assert client.get(f"/v1/checks/{check['id']}/photos/0").content == confident_shoe.read_bytes()
    matched = client.get("/v1/checks?verdict=match").json()["checks"][0]
    assert matched["photos"][0]["image_stored"] is False and client.get(f"/v1/checks/{matched['id']}/photos/0").status_code == 404
    first = client.get("/v1/checks?limit=3").json()
    second = client.get(f"/v1/checks?limit=3&before={first['next_before']}").json()
    assert len(first["checks"]) == 3 and len(second["checks"]) == 1 and second["next_before"] is None


def test_photos_are_kept_as_configured(make_client: Callable[..., TestClient], confident_shoe: Path) -> None:
    client = make_client(store_images="all")
    check_id = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "shoes"}).json()["check_id"]
    photo = client.get(f"/v1/checks/{check_id}/photos/0")
    assert photo.status_code == 200 and photo.content == confident_shoe.read_bytes()
    assert photo.headers["content-type"] == "image/jpeg"
    none = make_client(store_images="none")  # the same log file, another server's policy
    check_id = none.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"}).json()["check_id"]
    assert none.get(f"/v1/checks/{check_id}/photos/0").status_code == 404


def test_api_docs_work_without_internet(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    script = client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert client.get("/openapi.json").json()["info"]["title"] == "vitrina"


def test_the_server_and_vitrina_predict_flag_the_same_photos(client: TestClient, runs, tmp_path: Path) -> None:
    """One decision rule: /v1/predict/batch and `vitrina predict` (same model, same backend) give the same flags."""
    import csv

    from vitrina import api

    photos = [path for label in ("dress", "hat", "pants", "shoes", "shirt") for path in demo_photos(label)[:2]]
    served = client.post("/v1/predict/batch", files=[("image", upload(p)) for p in photos]).json()["results"]
    api.predict(runs.main, photos, out=tmp_path / "p.csv", backend="torch", progress=False, workers=0)
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(row["path"]).name for row in rows] == [r["filename"] for r in served]
    for row, answer in zip(rows, served):
        assert row["uncertain"] == str(answer["uncertain"]).lower(), answer["filename"]
        assert row["unknown"] == str(answer["unknown"]).lower(), answer["filename"]
        assert row["label_1"] == answer["predicted"]


def test_check_answers_carry_the_unknown_flags(client: TestClient, confident_shoe: Path) -> None:
    check = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "shoes"}).json()
    assert check["unknown"] is False and check["unknown_threshold"] > 0
    assert check["photos"][0]["unknown"] is False and check["photos"][0]["unknown_score"] <= check["unknown_threshold"]
