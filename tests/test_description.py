"""The typed model description: parsed and validated once; run folders and ONNX files of vitrina 0.1.0 keep loading."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from vitrina.description import METADATA_KEY, ModelDescription, NeighbourVote, Refit, Thresholds, UnknownDetector
from vitrina.errors import ModelError
from vitrina.export.loading import load_predictor
from vitrina.inference.predictor import parse_onnx_metadata
from vitrina.models.checkpoint import load_model, read_meta

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy-0.1.0"
DEMO = Path(__file__).resolve().parents[1] / "src" / "vitrina" / "demo" / "clothing"


def test_a_legacy_model_json_parses_to_typed_fields() -> None:
    description = read_meta(LEGACY)
    assert description.model == "cnn1" and description.mode == "scratch" and description.num_classes == 10
    assert description.preprocess.input_size == 32 and description.preprocess.resize == "letterbox"
    assert description.thresholds == Thresholds(confidence=0.185482, accept_rate=0.95)
    assert description.unknown == UnknownDetector("knn", 0.334695, 0.95, "unknown.safetensors", "unknown_score", 1, 240)
    assert description.neighbours == NeighbourVote(k=20, temperature=0.05, weight=0.5, bank_size=240)
    assert not description.flip_average and description.weights_digest is None
    assert description.to_dict() == json.loads((LEGACY / "model.json").read_text())


def test_legacy_onnx_metadata_parses_with_its_export_checks() -> None:
    text = (LEGACY / "onnx-metadata.json").read_text()
    description = parse_onnx_metadata({METADATA_KEY: text}, "legacy.onnx")
    assert description.export is not None and description.export.precision == "fp32"
    assert description.export.outputs == ("probabilities", "unknown_score")
    assert description.export.checks["parity"]["top1_identical"]
    assert description.metrics["split"] == "test"
    assert description.to_dict() == json.loads(text)


@pytest.mark.parametrize("source", ["run", "onnx"])
def test_legacy_artifacts_predict_what_they_predicted_when_they_were_made(source: str, tmp_path: Path) -> None:
    expected = json.loads((LEGACY / "expected.json").read_text())
    if source == "run":
        run = Path(shutil.copytree(LEGACY, tmp_path / "run", ignore=shutil.ignore_patterns("*.onnx", "*metadata.json")))
        predictor, reference = load_predictor(run, "torch"), expected["torch"]
        model, description = load_model(run)
        assert model.vote is not None and model.vote.k == description.neighbours.k == 20
    else:
        predictor, reference = load_predictor(LEGACY / "model.onnx"), expected["onnx"]
    photos = [DEMO / p for p in expected["photos"]]
    probs, errors = predictor.predict_paths(photos)
    assert errors == [None] * len(photos)
    np.testing.assert_allclose(probs, reference["probabilities"], atol=1e-5)
    _, scores = predictor.predict_scored(np.stack([predictor.load(p) for p in photos]))
    np.testing.assert_allclose(scores, reference["unknown_scores"], atol=1e-5)


def test_every_field_round_trips(tmp_path: Path) -> None:
    legacy = read_meta(LEGACY)
    full = legacy.with_changes(flip_average=True, weights_digest="ab" * 32, coarse_of={"dress": "clothes"}, train_seconds=1.5,
                               refit=Refit(epochs=8, photos=3411, validation_photos=341, unknown_scale=0.93, continued=True))
    assert ModelDescription.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    infinite = legacy.with_changes(unknown=UnknownDetector("msp", math.inf))
    assert ModelDescription.from_dict(json.loads(json.dumps(infinite.to_dict()))).unknown.threshold == math.inf


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"classes": []}, "classes must be a non-empty list"),
        ({"classes": ["a", "a"]}, "unique"),
        ({"preprocess": {"input_size": 2}}, "too small"),
        ({"preprocess": {"input_size": 100_000}}, "too large"),
        ({"unknown": {"score": "magic", "threshold": 1}}, "unknown.score"),
        ({"unknown": {"score": "knn", "threshold": 0.2, "file": "../../etc/passwd"}}, "file name beside the model"),
        ({"neighbours": {"k": 0, "temperature": 0.1, "weight": 0.5, "bank_size": 3}}, "neighbours.k"),
        ({"neighbours": {"k": 5, "temperature": 0.1, "weight": 0.5, "bank_size": 3, "validation_photos": -1}}, "neighbours.validation_photos"),
        ({"thresholds": {"confidence": 2}}, "thresholds.confidence"),
        ({"refit": {"epochs": 0, "photos": 10, "validation_photos": 2}}, "refit.epochs"),
        ({"refit": {"epochs": 8, "photos": 10}}, "refit lacks 'validation_photos'"),
        ({"refit": {"epochs": 8, "photos": 10, "validation_photos": 2, "continued": "yes"}}, "refit.continued"),
        ({"hidden": "wide"}, "hidden"),
        ({"format": "other/9"}, "format"),
    ],
)
def test_damaged_descriptions_are_clear_errors(change: dict, message: str) -> None:
    data = {**json.loads((LEGACY / "model.json").read_text()), **change}
    with pytest.raises(ModelError, match=message):
        ModelDescription.from_dict(data, "model.json")


def test_a_missing_key_names_it() -> None:
    data = json.loads((LEGACY / "model.json").read_text())
    del data["preprocess"]
    with pytest.raises(ModelError, match="lacks 'preprocess'"):
        ModelDescription.from_dict(data, "model.json")


def test_a_vote_that_holds_the_validation_photos_says_so_and_round_trips() -> None:
    data = json.loads((LEGACY / "model.json").read_text())
    data["neighbours"] = {**data["neighbours"], "bank_size": 300, "validation_photos": 60}
    description = ModelDescription.from_dict(data, "model.json")
    assert description.neighbours == NeighbourVote(k=20, temperature=0.05, weight=0.5, bank_size=300, validation_photos=60)
    assert description.to_dict()["neighbours"]["validation_photos"] == 60
    assert ModelDescription.from_dict(description.to_dict(), "again").neighbours == description.neighbours
