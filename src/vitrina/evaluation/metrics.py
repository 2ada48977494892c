"""Classification metrics from predicted probabilities (pure numpy; checked against scikit-learn in tests)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: rows are true classes, columns predicted classes."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """ECE over equal-width confidence bins, plus the per-bin table for a reliability diagram."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else 0.0
        conf = float(confidence[mask].mean()) if n else 0.0
        ece += n / max(len(y_true), 1) * abs(acc - conf)
        table.append({"lower": float(lo), "upper": float(hi), "count": n, "accuracy": acc, "confidence": conf})
    return float(ece), table


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], split: str = "test") -> dict:
    """accuracy, top-k, per-class precision/recall/F1/support, macro/weighted F1, ECE."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    n = int(len(y_true))
    metrics: dict = {
        "split": split,
        "n_images": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() else float("nan"),
        "macro_precision": float(precision[present].mean()) if present.any() else float("nan"),
        "macro_recall": float(recall[present].mean()) if present.any() else float("nan"),
    }
    for top in (3, 5):
        if k > top and n:
            metrics[f"top{top}_accuracy"] = top_k_accuracy(y_true, probs, top)
    if n:
        metrics["ece"], metrics["calibration"] = expected_calibration_error(y_true, probs)
    metrics["per_class"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    metrics["confusion_matrix"] = cm.tolist()
    return metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
