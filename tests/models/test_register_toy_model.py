"""A model added the way a plugin adds one (a decorated builder) trains, exports and predicts through the public API."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from torch import nn

from tests.helpers import DEMO
from vitrina import api
from vitrina.description import METADATA_KEY, ModelDescription
from vitrina.errors import ModelError
from vitrina.models.network import Backbone
from vitrina.models.registry import (
    get_spec,
    list_models,
    register_model,
    temporary_models,
    unregister_model,
)
from vitrina.preprocess import Preprocess

BUILTINS = ["cnn1", "cnn2", "cnn3", "ad_cnn64", "fmnist_cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
# Unlike any builtin's, so the test sees that it is this model's preprocessing that travels.
TOY_PREPROCESS = Preprocess(
    input_size=40, mean=(0.4, 0.45, 0.5), std=(0.25, 0.25, 0.25), channels=3,
    resize="squash", crop_pct=1.0, interpolation="bicubic",
)


@pytest.fixture
def toy() -> Iterator[str]:
    """The model "toy": a two-block CNN, registered for the test and gone after it."""
    with temporary_models():

        @register_model("toy", family="scratch", description="a two-block toy CNN", preprocess=TOY_PREPROCESS,
                        default_mode="scratch")
        def build(*, channels: int, input_size: int, pretrained: bool) -> Backbone:
            stem = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
            body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            module = nn.Sequential()
            module.add_module("stem", stem)
            module.add_module("body", body)
            module.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)))
            return Backbone(module, 16, [["stem"], ["body"]])

        assert callable(build) and build.__name__ == "build", "the decorator returns the builder unchanged"
        yield "toy"
    assert "toy" not in [spec.name for spec in list_models()]


def test_a_registered_toy_model_trains_exports_and_predicts(toy: str, tmp_path: Path) -> None:
    assert [spec.name for spec in list_models()] == [*BUILTINS, toy]
    assert [row["name"] for row in api.list_models()] == [*BUILTINS, toy]
    config = api.resolve_config(None, **{
        "model.name": toy, "train.mode": "scratch", "model.input_size": 32, "train.epochs": 2,
        "train.workers": 1, "train.cache_dir": str(tmp_path / "cache"),
    })
    run = api.train(DEMO, config, out=tmp_path / "run", progress=False, log=lambda _: None)
    meta = ModelDescription.from_dict(json.loads((run.run_dir / "model.json").read_text()))
    assert meta.model == toy
    # The model's own preprocessing travels into the run (the input size from the config, the
    # resize mode chosen for the photos).
    assert meta.preprocess == TOY_PREPROCESS.with_overrides(input_size=32, resize=meta.preprocess.resize)

    exported = api.export(run.run_dir, log=lambda _: None)
    metadata = {p.key: p.value for p in onnx.load(str(exported.onnx_path), load_external_data=False).metadata_props}
    assert ModelDescription.from_dict(json.loads(metadata[METADATA_KEY])).preprocess == meta.preprocess

    folder = DEMO / "test" / "shoes"
    summary = api.predict(exported.onnx_path, [folder], out=tmp_path / "p.csv", progress=False, workers=0)
    assert summary.n_errors == 0 and summary.n_predicted == len(list(folder.glob("*.jpg"))) > 0
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary.n_predicted
    assert all(row[next(iter(row))] for row in rows)


def test_the_toy_model_is_gone_after_its_test() -> None:
    assert [spec.name for spec in list_models()] == BUILTINS
    with pytest.raises(ModelError, match="unknown model 'toy'"):
        get_spec("toy")


def test_registration_errors_are_model_errors(toy: str) -> None:
    def build(**_: object) -> Backbone:
        raise AssertionError("never built")

    with pytest.raises(ModelError, match=r"'toy' is already registered \(by tests\.models\.test_register_toy_model\)"):
        register_model(toy, family="scratch", description="", preprocess=TOY_PREPROCESS)(build)
    with pytest.raises(ModelError, match="'cnn1' is already registered"):
        register_model("cnn1", family="scratch", description="", preprocess=TOY_PREPROCESS)(build)
    with pytest.raises(ModelError, match="starting with 'timm:' are reserved"):
        register_model("timm:mine", family="timm", description="", preprocess=TOY_PREPROCESS)(build)
    with pytest.raises(ModelError, match="family must be one of"):
        register_model("toy2", family="imagenet", description="", preprocess=TOY_PREPROCESS)(build)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="needs family= and preprocess="):
        register_model("toy2")  # type: ignore[call-overload]
    with pytest.raises(ModelError, match="no such registered model"):
        unregister_model("toy2")
    assert [spec.name for spec in list_models()] == [*BUILTINS, toy]
    # The unknown-name message still suggests close names, the registered toy among them.
    with pytest.raises(ModelError, match=r"Did you mean toy\?"):
        get_spec("toyy")


def test_unregister_returns_the_spec(toy: str) -> None:
    spec = unregister_model(toy)
    assert spec.name == toy and spec.preprocess == TOY_PREPROCESS and spec.default_mode == "scratch"
    register_model(spec)
    assert get_spec(toy).builder is spec.builder
