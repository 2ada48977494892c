"""Evaluating a trained network on decoded images of one split."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vitrina.description import MirrorAverage
from vitrina.evaluation.metrics import classification_metrics, softmax
from vitrina.inference.decide import DecisionRule
from vitrina.models.runtime import predict_logits
from vitrina.models.unknown import UnknownScore, penultimate_features, score_features
from vitrina.preprocess import Preprocess, mirror_images


def predict_probabilities(
    model: torch.nn.Module,
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    mirror: MirrorAverage | None = None,
) -> np.ndarray:
    """Class probabilities for uint8 images (through ONNX Runtime where that is faster, see predict_logits),
    with the model's mirror average where it has one, as `vitrina predict` applies it."""
    def run(batch: np.ndarray) -> np.ndarray:
        return softmax(predict_logits(model, batch, preprocess, device, precision, cache_dir, batch_size=batch_size))

    probs = run(images)
    if mirror is not None:
        probs, _ = mirror.apply(probs, lambda rows: run(mirror_images(np.asarray(images[rows]))))
    return probs


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
    mirror: MirrorAverage | None = None,
) -> tuple[dict, np.ndarray]:
    """Metrics for one split, and the probabilities they came from."""
    probs = predict_probabilities(model, images, preprocess, device, precision, cache_dir=cache_dir, mirror=mirror)
    return evaluate_probabilities(probs, labels, classes, split, n_skipped), probs


def evaluate_probabilities(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], split: str = "test", n_skipped: int = 0) -> dict:
    """Metrics for one split from its predicted probabilities."""
    metrics = classification_metrics(labels, probs, classes, split=split)
    metrics["n_skipped"] = n_skipped
    return metrics


def unknown_scores(model: torch.nn.Module, scorer: UnknownScore | None, images: np.ndarray, preprocess: Preprocess,
                   device: torch.device, precision: str, cache_dir: str | Path | None) -> np.ndarray | None:
    """Each image's unknown-photo score, as `vitrina predict` and the server compute it (None: no detector)."""
    if scorer is None:
        return None
    features = penultimate_features(model, images, preprocess, device, precision, cache_dir)
    with torch.inference_mode():
        logits = model.head_logits(torch.from_numpy(features).to(device)).float().cpu().numpy()
    return score_features(scorer.to(device), features, logits)


def decision_metrics(rule: DecisionRule, probs: np.ndarray, scores: np.ndarray | None, labels: np.ndarray) -> dict[str, float]:
    """What the decision rule does on this split: the share it marks uncertain (and unknown), and
    the accuracy on the photos it answers with confidence."""
    uncertain = rule.uncertain(probs, scores)
    if uncertain is None:
        return {}
    sure = ~uncertain
    correct = probs.argmax(axis=1) == labels
    out = {
        "uncertain_share": float(uncertain.mean()) if len(uncertain) else 0.0,
        "accuracy_when_sure": float(correct[sure].mean()) if sure.any() else float("nan"),
        "confidence_threshold": rule.confidence,
    }
    unknown = rule.unknown(scores)
    if unknown is not None:
        out.update(unknown_share=float(unknown.mean()) if len(unknown) else 0.0, unknown_threshold=rule.unknown_threshold)
    return out


def write_predictions(path: str | Path, paths: Sequence[str], labels: Sequence[str], probs: np.ndarray, classes: Sequence[str],
                      rule: DecisionRule | None = None, scores: np.ndarray | None = None) -> Path:
    """One row per image: path, true label, predicted label, its probability, correctness, and
    with a ``rule`` the flags it gives (``uncertain``; ``unknown`` where scores are known)."""
    path = Path(path)
    uncertain = rule.uncertain(probs, scores) if rule is not None else None
    unknown = rule.unknown(scores) if rule is not None else None
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", "confidence", "correct",
                         *(["uncertain"] if uncertain is not None else []), *(["unknown"] if unknown is not None else [])])
        for i, (p, label, row) in enumerate(zip(paths, labels, probs)):
            top = int(row.argmax())
            flags = [] if uncertain is None else [str(bool(uncertain[i])).lower()]
            flags += [] if unknown is None else [str(bool(unknown[i])).lower()]
            writer.writerow([p, label, classes[top], f"{row[top]:.6f}", int(classes[top] == label), *flags])
    return path
