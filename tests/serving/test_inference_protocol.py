"""The Open Inference Protocol (KServe v2): health, metadata, infer in JSON and with binary data,
the same probabilities as /v1/predict, the same keys and errors; and a real Triton client."""
from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import RunningServer, Runs, demo_photos, upload
from tests.serving.test_errors import assert_error

INFER = "/v2/models/vitrina/infer"


def json_request(*photos: bytes, **extra: object) -> dict:
    data = [base64.b64encode(p).decode() for p in photos]
    return {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(photos)], "data": data}], **extra}


def v1_probabilities(client: TestClient, photo: Path, classes: list[str]) -> np.ndarray:
    answer = client.post("/v1/predict", files={"image": upload(photo)}, params={"top_k": len(classes)}).json()
    by_label = {row["label"]: row["probability"] for row in answer["top"]}
    return np.array([by_label[c] for c in classes])


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/models/vitrina/ready").json() == {"name": "vitrina", "ready": True}
    metadata = client.get("/v2/models/vitrina").json()
    classes = metadata["parameters"]["classes"]
    assert "shoes" in classes and metadata["versions"] == [client.get("/v1/model").json()["version"]]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]}
    assert_error(client.get("/v2/models/other"), 404, "model_not_found", "'vitrina'")


def test_json_infer_gives_the_probabilities_of_v1_predict(client: TestClient) -> None:
    classes = client.get("/v2/models/vitrina").json()["parameters"]["classes"]
    photos = demo_photos("shoes")[:2] + demo_photos("hat")[:1]
    answer = client.post(INFER, json=json_request(*(p.read_bytes() for p in photos)))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "r1" and body["model_name"] == "vitrina" and answer.headers["x-model-version"] == body["model_version"]
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, len(classes)] and outputs["probabilities"]["datatype"] == "FP32"
    probs = np.array(outputs["probabilities"]["data"]).reshape(3, len(classes))
    for row, photo in zip(probs, photos):
        np.testing.assert_allclose(row, v1_probabilities(client, photo, classes), atol=1e-5)
    assert outputs["label"]["data"] == [classes[i] for i in probs.argmax(axis=1)]


def binary_request(photos: list[bytes], binary_outputs: bool) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(p)) + p for p in photos)
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(photos)], "parameters": {"binary_data_size": len(raw)}}],
              "outputs": [{"name": "probabilities", "parameters": {"binary_data": binary_outputs}}, {"name": "label"}]}
    head = json.dumps(header).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}


def test_binary_data_in_and_out(client: TestClient) -> None:
    classes = client.get("/v2/models/vitrina").json()["parameters"]["classes"]
    photo = demo_photos("shoes")[0]
    body, headers = binary_request([photo.read_bytes()], binary_outputs=True)
    answer = client.post(INFER, content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    header = json.loads(answer.content[:length])
    probabilities, label = header["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 4 * len(classes) and label["data"]
    probs = np.frombuffer(answer.content[length:], dtype="<f4")
    np.testing.assert_allclose(probs, v1_probabilities(client, photo, classes), atol=1e-5)


def test_bad_requests_are_clear_json_errors(client: TestClient) -> None:
    assert_error(client.post(INFER, content=b"{not json"), 400, "bad_infer_request", "JSON")
    assert_error(client.post(INFER, json={"inputs": []}), 400, "bad_infer_request", "exactly one")
    wrong_type = json_request(b"x")
    wrong_type["inputs"][0]["datatype"] = "FP32"
    assert_error(client.post(INFER, json=wrong_type), 400, "bad_infer_request", "BYTES")
    not_base64 = json_request(b"x")
    not_base64["inputs"][0]["data"] = ["%%%"]
    assert_error(client.post(INFER, json=not_base64), 400, "bad_infer_request", "base64")
    assert_error(client.post(INFER, json=json_request(b"a", b"b") | {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                                                              "data": ["YQ==", "Yg=="]}]}), 400, "bad_infer_request", "3 photos")
    assert_error(client.post(INFER, json=json_request(b"plain text, not a photo")), 422, "invalid_image")
    body, headers = binary_request([b"\xff\xd8\xff" + b"0" * 40], binary_outputs=False)
    assert client.post(INFER, content=body[:-5], headers=headers).status_code == 400  # truncated binary data
    assert_error(client.post(INFER, json=json_request(b"x", outputs=[{"name": "logits"}])), 400, "bad_infer_request", "logits")


def test_keys_and_rate_limit_apply_as_on_v1(make_client: Callable[..., TestClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITRINA_API_KEYS", "secret-key")
    client = make_client()
    photo = demo_photos("shoes")[0].read_bytes()
    assert_error(client.post(INFER, json=json_request(photo)), 401, "unauthorized")
    assert client.get("/v2/models/vitrina", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post(INFER, json=json_request(photo), headers={"X-API-Key": "secret-key"}).status_code == 200
    assert client.get("/v2/health/ready").status_code == 200  # health stays open, as /healthz


@pytest.mark.slow
def test_a_triton_client_calls_the_real_server(runs: Runs, tmp_path: Path, start_server: Callable[..., RunningServer]) -> None:
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e .[dev])")
    server = start_server(runs.main, "--db", str(tmp_path / "log.db"), "--model-name", "products")
    triton = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("products")
    classes = triton.get_model_metadata("products")["parameters"]["classes"]
    photos = [p.read_bytes() for p in demo_photos("shoes")[:2]]
    for binary in (True, False):
        image = httpclient.InferInput("image", [len(photos)], "BYTES")
        # binary data: the photos' bytes; the JSON form: base64 strings
        data = photos if binary else [base64.b64encode(p).decode() for p in photos]
        image.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary), httpclient.InferRequestedOutput("label", binary_data=binary)]
        result = triton.infer("products", [image], outputs=outputs)
        probs = result.as_numpy("probabilities")
        assert probs.shape == (2, len(classes)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")] == [
            classes[i] for i in probs.argmax(axis=1)]
