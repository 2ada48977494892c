"""The pieces both epoch loops share: optimizer, learning-rate schedule, class weights, the
epoch's sample order, frozen BatchNorm statistics, loss with accuracy, and the best epoch so far."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def build_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    """AdamW, Adam or Nesterov SGD over ``groups`` (parameter groups with their learning rates)."""
    # Fused Adam updates all tensors in one kernel: on a CPU a small head's step took 1.5 ms
    # instead of 5.5 ms (PyTorch only picks a faster implementation by itself on CUDA).
    groups = [{**g, "params": list(g["params"])} for g in groups]
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = {"fused": True} if devices <= {"cpu", "cuda"} else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay, **fused)
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def lr_factor(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    """The learning rate's factor at each step: linear warm-up, then constant, step or cosine decay."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "step":
            return 0.1 ** int(progress * 3)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _planned_factor(epochs: int, steps_per_epoch: int, warmup_epochs: float, schedule: str) -> Callable[[int], float]:
    return lr_factor(epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch), schedule)


def lr_schedule(optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float, schedule: str,
                first_epoch: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step scheduler over ``epochs`` epochs of ``steps_per_epoch`` steps, starting
    ``first_epoch`` epochs along it (a network that goes on learning through the schedule's end)."""
    planned, skipped = _planned_factor(epochs, steps_per_epoch, warmup_epochs, schedule), first_epoch * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, planned if not skipped else lambda step: planned(step + skipped))


def replan_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, epochs: int, steps_per_epoch: int, warmup_epochs: float,
                    schedule: str) -> None:
    """Plan ``scheduler`` for ``epochs`` epochs in all from its next step on; the steps taken stay as they were.

    Within the warm-up, and for the step and constant schedules, the rest follows the schedule
    planned for the new count; past the warm-up a cosine decays from the factor it has reached
    to zero at the new last step, so the learning rate does not jump.
    """
    groups = len(scheduler.optimizer.param_groups)
    now, total = scheduler.last_epoch, epochs * steps_per_epoch
    if schedule != "cosine" or now <= int(warmup_epochs * steps_per_epoch):
        scheduler.lr_lambdas = [_planned_factor(epochs, steps_per_epoch, warmup_epochs, schedule)] * groups
        return
    reached = scheduler.lr_lambdas[0](now)

    def decay(step: int) -> float:
        progress = (step - now) / max(1, total - now)
        return reached * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))

    scheduler.lr_lambdas = [decay] * groups


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Loss weights inversely proportional to each class's share of ``labels``."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def epoch_order(labels: np.ndarray, balance: str, seed: int, epoch: int) -> np.ndarray:
    """This epoch's sample order (seeded by epoch, so a resumed run sees the same batches)."""
    rng = np.random.default_rng([seed, epoch])
    if balance == "sampler":
        counts = np.bincount(labels)
        p = 1.0 / counts[labels]
        return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
    return rng.permutation(len(labels))


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode: its running statistics stay as they are."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``logits`` (NaN for no labels)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    t = torch.from_numpy(logits)
    loss = F.cross_entropy(t, torch.from_numpy(labels)).item()
    accuracy = float((logits.argmax(1) == labels).mean())
    return loss, accuracy


def _ranking(row: dict[str, float | None]) -> tuple[float, float]:
    """How epochs rank: validation accuracy, then lower validation loss (a value saved as null, NaN)."""
    accuracy, loss = (float("nan") if row.get(k) is None else float(row[k]) for k in ("val_accuracy", "val_loss"))  # type: ignore[arg-type]
    return accuracy, -loss


def chosen_epoch(history: list[dict[str, float | None]]) -> int:
    """The epoch (from 1) that :class:`BestEpoch` keeps from ``history`` (the first of equals),
    read back from a history file; 0 for no epochs."""
    best, chosen = _ranking({"val_accuracy": -1.0, "val_loss": float("inf")}), 0
    for number, row in enumerate(history, 1):
        if _ranking(row) > best:
            best, chosen = _ranking(row), number
    return chosen


class BestEpoch:
    """The epochs' history and the best of them so far, by validation accuracy, then validation loss,
    with a copy of the model's weights after it (kept on the CPU where ``to_cpu``)."""

    def __init__(self, to_cpu: bool = False):
        self.to_cpu = to_cpu
        self.history: list[dict[str, float]] = []
        self.best = (-1.0, float("inf"))  # (validation accuracy, validation loss)
        self.state: dict[str, torch.Tensor] | None = None

    def record(self, row: dict[str, float], model: nn.Module, select: bool = True) -> bool:
        """Add the epoch's history row; True (and its weights kept) when it is the best so far.

        Without ``select`` (no validation photos to choose by) every epoch is kept: the last one wins.
        """
        self.history.append(row)
        improved = not select or _ranking(row) > _ranking({"val_accuracy": self.best[0], "val_loss": self.best[1]})
        if improved:
            if select:
                self.best = (row["val_accuracy"], row["val_loss"])
            self.state = {k: (v.detach().cpu() if self.to_cpu else v.detach()).clone() for k, v in model.state_dict().items()}
        return improved
