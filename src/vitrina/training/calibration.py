"""Calibration after training: the softmax temperature fitted on the validation split and folded
into the head, and the confidence threshold below which a prediction is "uncertain"."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrina.description import Thresholds
from vitrina.models.network import output_layers

Log = Callable[[str], None]
ACCEPT_RATE = 0.95  # share of in-distribution (validation) photos a model answers confidently


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature that minimises validation NLL (calibration; argmax unchanged)."""
    if len(labels) < 2:
        return 1.0
    x, y = torch.from_numpy(logits).double(), torch.from_numpy(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(10.0, max(0.05, log_t.exp().item())))


def apply_temperature(model: nn.Module, temperature: float) -> None:
    """Fold 1/T into the head's output layers (every member's, for an ensemble), so every runtime
    (torch, ONNX) is calibrated."""
    with torch.no_grad():
        for layer in output_layers(model.head):
            layer.weight.div_(temperature)
            if layer.bias is not None:
                layer.bias.div_(temperature)


def calibrate(model: nn.Module, val_logits: np.ndarray, val_labels: np.ndarray, log: Log = print) -> tuple[float, np.ndarray]:
    """Fit the temperature on the validation logits and fold it into ``model``; returns it and the calibrated logits."""
    temperature = fit_temperature(val_logits, val_labels)
    apply_temperature(model, temperature)
    log(f"  calibration: softmax temperature {temperature:.3f} fitted on the validation split")
    return temperature, val_logits / temperature


def confidence_threshold(logits: np.ndarray, accept_rate: float) -> Thresholds:
    """The top-class probability above which ``accept_rate`` of validation photos fall.

    Below it a prediction is "uncertain": the server and `predict` say so instead of guessing.
    """
    confidence = torch.softmax(torch.from_numpy(logits).double(), dim=1).max(dim=1).values.numpy()
    value = float(np.quantile(confidence, 1.0 - accept_rate)) if len(confidence) else 0.0
    return Thresholds(confidence=round(value, 6), accept_rate=accept_rate)
