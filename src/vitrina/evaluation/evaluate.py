"""Evaluating a trained network on decoded images of one split."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from vitrina.evaluation.metrics import classification_metrics, softmax
from vitrina.models.runtime import forward_uint8
from vitrina.preprocess import Preprocess


def predict_probabilities(
    model: torch.nn.Module,
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 64,
) -> np.ndarray:
    model.eval()
    return softmax(forward_uint8(model, images, preprocess, device, precision, batch_size=batch_size))


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
) -> tuple[dict, np.ndarray]:
    """Metrics for one split, and the probabilities they came from."""
    probs = predict_probabilities(model, images, preprocess, device, precision)
    metrics = classification_metrics(labels, probs, classes, split=split)
    metrics["n_skipped"] = n_skipped
    return metrics, probs
