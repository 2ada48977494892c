"""Evaluating a trained network on decoded images of one split."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vitrina.evaluation.metrics import classification_metrics, softmax
from vitrina.models.runtime import predict_logits
from vitrina.preprocess import Preprocess


def predict_probabilities(
    model: torch.nn.Module,
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Class probabilities for uint8 images (through ONNX Runtime where that is faster, see predict_logits)."""
    return softmax(predict_logits(model, images, preprocess, device, precision, cache_dir, batch_size=batch_size))


def evaluate_images(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    split: str = "test",
    n_skipped: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[dict, np.ndarray]:
    """Metrics for one split, and the probabilities they came from."""
    probs = predict_probabilities(model, images, preprocess, device, precision, cache_dir=cache_dir)
    return evaluate_probabilities(probs, labels, classes, split, n_skipped), probs


def evaluate_probabilities(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], split: str = "test", n_skipped: int = 0) -> dict:
    """Metrics for one split from its predicted probabilities."""
    metrics = classification_metrics(labels, probs, classes, split=split)
    metrics["n_skipped"] = n_skipped
    return metrics


def write_predictions(path: str | Path, paths: Sequence[str], labels: Sequence[str], probs: np.ndarray, classes: Sequence[str]) -> Path:
    """One row per image: path, true label, predicted label, its probability, and correctness."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", "confidence", "correct"])
        for p, label, row in zip(paths, labels, probs):
            top = int(row.argmax())
            writer.writerow([p, label, classes[top], f"{row[top]:.6f}", int(classes[top] == label)])
    return path
