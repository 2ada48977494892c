"""The metrics agree with scikit-learn's on the same predictions."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from vitrina import api
from vitrina.evaluation.metrics import classification_metrics


def reference_ece(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error written out directly: bins by confidence, |accuracy - confidence|."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return sum(
        (which == b).sum() / len(y_true) * abs(correct[which == b].mean() - confidence[which == b].mean())
        for b in range(bins) if (which == b).any()
    )


def check_against_sklearn(metrics: dict, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> None:
    present = sorted(set(y_true.tolist()))  # macro and weighted averages run over the classes in the data
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert metrics["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    assert metrics["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(len(classes)), zero_division=0)
    for i, name in enumerate(classes):
        row = metrics["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
        assert row["support"] == support[i]
    assert metrics["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(len(classes))).tolist()


def test_metrics_match_sklearn_on_random_predictions() -> None:
    rng = np.random.default_rng(3)
    classes = [f"c{i}" for i in range(7)]
    y_true = rng.choice([0, 1, 2, 3, 5, 6], size=300)  # class c4 absent from the data, still predicted
    logits = rng.normal(size=(300, 7)) + 2.0 * np.eye(7)[y_true] * rng.random((300, 1))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = classification_metrics(y_true, probs, classes)
    y_pred = probs.argmax(axis=1)
    assert (y_pred == 4).any()
    check_against_sklearn(metrics, y_true, y_pred, classes)
    for k in (3, 5):
        assert metrics[f"top{k}_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y_true, probs, k=k, labels=range(7)))
    assert metrics["ece"] == pytest.approx(reference_ece(y_true, probs))


def test_top_k_is_absent_when_the_model_has_at_most_k_classes() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    metrics = classification_metrics(np.array([0, 1]), probs, ["a", "b", "c"])
    assert "top3_accuracy" not in metrics and "top5_accuracy" not in metrics


def test_evaluation_of_a_run_matches_sklearn_on_its_predictions(shapes_run: Path, shapes: Path, tmp_path: Path) -> None:
    result = api.evaluate(shapes_run, shapes, out=tmp_path / "eval", progress=False)
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    classes = metrics["classes"]
    with open(result.out_dir / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    index = {name: i for i, name in enumerate(classes)}
    y_true = np.array([index[r["label"]] for r in rows])
    y_pred = np.array([index[r["predicted"]] for r in rows])
    assert len(rows) == metrics["n_images"] == 18
    check_against_sklearn(metrics, y_true, y_pred, classes)
