"""A serving install without the training stack: a fresh virtual environment with vitrina's core
alone (no PyTorch) serves and predicts from an exported .onnx file, and training says which extra
it needs."""
from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import httpx
import pytest

from tests.helpers import DEMO
from tests.serving.conftest import RunningServer, Runs, demo_photos, upload
from vitrina import api

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slim_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The interpreter of a new virtual environment where `pip install vitrina` (no extra) ran."""
    folder = tmp_path_factory.mktemp("slim") / "venv"
    venv.EnvBuilder(with_pip=True).create(folder)
    python = str(folder / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(REPO)],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        reachable = subprocess.run([python, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder / "probe"), "pyyaml"],
                                   capture_output=True, text=True, timeout=300)
        if reachable.returncode != 0:
            pytest.skip(f"no package index reachable for a fresh install: {reachable.stderr.strip()[-300:]}")
        raise AssertionError(f"pip install vitrina (core) failed:\n{install.stdout}{install.stderr}")
    return python


def test_the_core_install_serves_and_predicts_an_onnx_file_without_pytorch(slim_python: str, runs: Runs, tmp_path: Path) -> None:
    missing = subprocess.run([slim_python, "-c", "import torch"], capture_output=True, text=True)
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr

    model = api.export(runs.main, out=tmp_path / "model.onnx", log=lambda _: None).onnx_path
    rows = tmp_path / "rows.csv"
    predicted = subprocess.run([slim_python, "-m", "vitrina", "predict", str(model), str(DEMO / "test" / "shoes"), "--out", str(rows),
                                "--quiet"], capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    assert len(rows.read_text().splitlines()) == len(demo_photos("shoes")) + 1

    server = RunningServer(model, "--db", str(tmp_path / "log.db"), python=slim_python, backend="onnx")
    try:
        photo = demo_photos("shoes")[0]
        answer = httpx.post(f"{server.url}/v1/check", files={"image": upload(photo)}, data={"category": "shoes"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["verdict"] in ("match", "mismatch", "uncertain")
    finally:
        server.stop()

    trained = subprocess.run([slim_python, "-m", "vitrina", "train", str(DEMO)], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
    assert trained.returncode == 2 and "pip install 'vitrina[train]'" in trained.stderr and "Traceback" not in trained.stderr
    parquet = subprocess.run([slim_python, "-m", "vitrina", "predict", str(model), str(DEMO / "test" / "shoes"), "--out",
                              str(tmp_path / "rows.parquet"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert parquet.returncode == 2 and "pip install 'vitrina[parquet]'" in parquet.stderr and "Traceback" not in parquet.stderr
