"""Shared by the serving tests: small real models trained once, photos, clients and real servers."""
from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import DEMO
from tests.serving.postgres import PostgresServer, find_postgres
from vitrina import api
from vitrina.config import resolve
from vitrina.serving.app import create_app
from vitrina.serving.model import LoadedModel, load_model
from vitrina.serving.settings import ServeSettings


MODEL_FILES = ("unknown.safetensors", "model.json", "model.safetensors")  # statistics first, description last but one


def replace_model(source: Path, target: Path) -> None:
    """Install another run's model files the way a deployment should: copy beside, then rename."""
    for name in MODEL_FILES:
        shutil.copyfile(source / name, target / f".{name}.new")
        os.replace(target / f".{name}.new", target / name)


@dataclass
class Runs:
    main: Path  # efficientnet_lite0 features + a linear head, 10 epochs
    other: Path  # the same classes with a differently trained head: a "new version"


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Two bottleneck runs on the embedded clothing photos (10 classes); features computed once, in
    the session's shared cache (the ONNX export test trains the same backbone at the same size)."""
    cache = tmp_path_factory.getbasetemp() / "vitrina-cache"
    base = tmp_path_factory.mktemp("serving-runs")
    trained = []
    for name, epochs in (("main", 10), ("other", 3)):
        settings = {"train.mode": "bottleneck", "model.input_size": 96, "train.epochs": epochs, "train.workers": 1,
                    "train.cache_dir": str(cache)}
        trained.append(api.train(DEMO, resolve(overrides=settings), out=base / name, progress=False, log=lambda _: None).run_dir)
    return Runs(*trained)


def serve_settings(model: Path, tmp_path: Path, **options: object) -> ServeSettings:
    """Test settings: PyTorch backend (no export step), a fresh log, no reloading unless asked."""
    values: dict = {"backend": "torch", "database": str(tmp_path / "moderation.db"), "reload_interval": 0, **options}
    return ServeSettings(model=str(model), **values)


@pytest.fixture(scope="session")
def loaded(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The main run, loaded once for every in-process app."""
    return load_model(serve_settings(runs.main, tmp_path_factory.mktemp("unused")))


@pytest.fixture
def make_client(runs: Runs, loaded: LoadedModel, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Start an in-process app on the main model with settings overridden: ``make_client(rate_limit=1)``."""
    clients: list[TestClient] = []

    def make(model: LoadedModel | None = loaded, **options: object) -> TestClient:
        client = TestClient(create_app(serve_settings(runs.main, tmp_path, **options), model))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


# ----------------------------------------------------------------------------- photos
def demo_photos(label: str) -> list[Path]:
    return sorted((DEMO / "test" / label).glob("*.jpg"))


def upload(path: Path) -> tuple[str, bytes, str]:
    return (path.name, path.read_bytes(), "image/jpeg")


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def confident_shoe(loaded: LoadedModel) -> Path:
    """The demo test photo of shoes the model recognises most confidently (above its threshold)."""
    photos = demo_photos("shoes")
    probs = loaded.predictor.predict_images([Image.open(path).convert("RGB") for path in photos])
    shoes = loaded.classes.index("shoes")
    best = int(np.argmax(np.where(probs.argmax(axis=1) == shoes, probs[:, shoes], -1)))
    assert probs[best].argmax() == shoes and probs[best, shoes] >= (loaded.rule().confidence or 0), "no shoe photo recognised"
    return photos[best]


# ----------------------------------------------------------------------------- real servers
class RunningServer:
    """`python -m vitrina serve` on a free loopback port, stopped with Ctrl+C (SIGINT)."""

    def __init__(self, model: Path, *args: str, python: str = sys.executable, backend: str = "torch"):
        command = [python, "-m", "vitrina", "serve", str(model), "--port", "0", "--backend", backend, *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self.url = self._read_url()
        self._wait_ready()

    def _read_url(self, timeout: float = 120) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if match := re.search(r"open (http://\S+?)/ in a browser", line):
                return match.group(1)
        self.process.kill()
        raise AssertionError("the server did not start:\n" + "".join(self.output))

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the server did not become ready")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> str:
        """Stop the server; returns the rest of its output."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        rest, _ = self.process.communicate(timeout=timeout)
        self.output.append(rest)
        return rest


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    """Start real servers; any still running at the end of the test is stopped."""
    servers: list[RunningServer] = []

    def start(model: Path, *args: str) -> RunningServer:
        server = RunningServer(model, *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.communicate()


# ----------------------------------------------------------------------------- databases
@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skipped, saying why, where none can run)."""
    binaries, why = find_postgres()
    if binaries is None:
        pytest.skip(f"PostgreSQL tests skipped: {why}")
    server = PostgresServer(binaries)
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def log_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh moderation log: an SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "moderation.db")
    return request.getfixturevalue("postgres").database()
