"""Hot reload: a new model file is picked up in the background without failing a request."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.serving.conftest import MODEL_FILES, Runs, replace_model, serve_settings, upload
from vitrina.serving.app import create_app
from vitrina.serving.model import files_version, model_files

def wait_for_version(client: TestClient, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/v1/model").json()["version"] != version:
        assert time.monotonic() < deadline, "the new model was not loaded in time"
        time.sleep(0.05)


def test_a_new_model_is_swapped_in_without_failing_requests(runs: Runs, tmp_path: Path, confident_shoe: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(runs.main / name, served / name)
    old, new = files_version(model_files(served)), files_version(model_files(runs.other))
    settings = serve_settings(served, tmp_path, reload_interval=0.05)
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/model").json()["version"] == old

        def keep_checking() -> None:
            while not stop.is_set():
                response = client.post("/v1/check", files={"image": upload(confident_shoe)}, data={"category": "hat"})
                answers.append((response.status_code, response.json().get("model_version")))

        worker = threading.Thread(target=keep_checking)
        worker.start()
        try:
            time.sleep(0.3)
            replace_model(runs.other, served)
            wait_for_version(client, new)
            time.sleep(0.3)
        finally:
            stop.set()
            worker.join(timeout=60)
        metrics = client.get("/metrics").text

    assert answers and all(status == 200 for status, _ in answers), answers
    versions = [version for _, version in answers]
    assert set(versions) == {old, new} and versions.index(new) > versions.index(old)
    assert versions[versions.index(new):] == [new] * (len(versions) - versions.index(new))  # never back to the old one
    assert 'vitrina_model_reloads_total{result="loaded"} 1.0' in metrics
    assert f'vitrina_model_info{{name="efficientnet_lite0",version="{new}"}} 1.0' in metrics


def test_a_broken_new_model_keeps_the_old_one_serving(runs: Runs, tmp_path: Path, confident_shoe: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    for name in MODEL_FILES:
        shutil.copyfile(runs.main / name, served / name)
    old = files_version(model_files(served))
    with TestClient(create_app(serve_settings(served, tmp_path, reload_interval=0.05))) as client:
        (served / "model.safetensors").write_bytes(b"not weights")
        deadline = time.monotonic() + 30
        while 'vitrina_model_reloads_total{result="failed"} 1.0' not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the broken model was never tried"
            time.sleep(0.05)
        response = client.post("/v1/predict", files={"image": upload(confident_shoe)})
        assert response.status_code == 200 and response.json()["model_version"] == old
