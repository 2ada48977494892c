"""Fixtures of the prediction tests: one small exported model, trained once."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import DEMO
from vitrina.config import resolve


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported scratch cnn1 model (32 px) trained on the demo photos."""
    from vitrina import api

    settings = {
        "train.mode": "scratch", "model.name": "cnn1", "model.input_size": 32, "train.epochs": 2,
        "train.patience": 0, "train.workers": 1, "train.cache_dir": str(tmp_path_factory.getbasetemp() / "vitrina-cache"),
    }
    run = api.train(DEMO, resolve(overrides=settings), out=tmp_path_factory.mktemp("inference") / "run", progress=False, log=lambda _: None).run_dir
    return api.export(run, precision="fp32", log=lambda _: None).onnx_path  # fp32: compared with PyTorch
