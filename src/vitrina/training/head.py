"""The classifier head fitted on cached frozen-backbone features: bottleneck training, and the
warm start of fine-tuning."""
from __future__ import annotations

import json
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrina.config import Config
from vitrina.data.cache import DecodedImages
from vitrina.models.network import HeadEnsemble
from vitrina.training.augment import build_augment
from vitrina.training.callbacks import Callback, EarlyStoppingOnBest, EpochEnd, StopAfter, run_callbacks
from vitrina.training.features import BackboneFeatures
from vitrina.training.optim import BestEpoch, build_optimizer, class_weights, epoch_order, loss_and_accuracy, lr_schedule
from vitrina.training.plan import Plan

Log = Callable[[str], None]
WARM_START_HEAD = {"epochs": 30, "batch_size": 256, "lr": 2e-3, "weight_decay": 1e-3}  # head fit before fine-tuning


def head_patience(patience: int) -> int:
    """Epochs without a better one before the head stops: longer than the network's, as head epochs are short and noisy."""
    return max(patience * 3, 10) if patience else 0


def fit_head(
    head: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    plan: Plan,
    config: Config,
    num_classes: int,
    callbacks: Sequence[Callback] = (),
    log: Log = print,
    repeat_epochs: int | None = None,
) -> list[dict[str, float]]:
    """Train a head on cached features (seconds); keeps the epoch with the best validation
    accuracy, stopping early after ``head_patience`` epochs without a better one.

    ``callbacks`` run after each epoch, before the stopping rule. ``repeat_epochs``: instead,
    train that many epochs of the planned schedule (0: all of it) and keep the last, choosing
    nothing (a refit repeats what validation chose, having learned the validation photos).
    """
    # A linear head's matrices are too small to gain from a second thread, and lose a lot when the cores are busy.
    threads = torch.get_num_threads()
    if not any(isinstance(m, nn.ReLU | nn.GELU) for m in head.modules()):
        torch.set_num_threads(1)
    try:
        return _fit_head(head, train_x, train_y, val_x, val_y, plan, config, num_classes, callbacks, log, repeat_epochs)
    finally:
        torch.set_num_threads(threads)


def _head_step(head: nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one batch; an ensemble's members each learn on their own, as if trained alone."""
    if isinstance(head, HeadEnsemble):
        members = head.member_logits(x)
        loss = torch.stack([F.cross_entropy(m, y, weight=weight, label_smoothing=label_smoothing) for m in members]).mean()
        return loss, torch.stack(members).mean(dim=0).detach()
    logits = head(x)
    return F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing), logits


def _fit_head(
    head: nn.Module, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, plan: Plan,
    config: Config, num_classes: int, callbacks: Sequence[Callback], log: Log, repeat_epochs: int | None = None,
) -> list[dict[str, float]]:
    t = config.train
    select = repeat_epochs is None
    torch.manual_seed(t.seed)
    xs, ys = torch.from_numpy(train_x), torch.from_numpy(train_y)
    vx = torch.from_numpy(val_x)
    weight = class_weights(train_y, num_classes) if t.balance == "weights" else None
    batch = min(plan.batch_size, len(xs))
    optimizer = build_optimizer(t.optimizer, [{"params": head.parameters(), "lr": plan.lr}], plan.weight_decay)
    scheduler = lr_schedule(optimizer, plan.epochs, math.ceil(len(xs) / batch), t.warmup_epochs, t.schedule)
    callbacks = [*callbacks, EarlyStoppingOnBest(head_patience(t.patience)) if select else StopAfter(repeat_epochs or plan.epochs)]
    chosen = BestEpoch()
    for epoch in range(plan.epochs):
        head.train()
        order = torch.from_numpy(epoch_order(train_y, t.balance, t.seed, epoch))
        total, correct, loss_sum = 0, 0, 0.0
        for part in range(0, len(order), batch):
            idx = order[part : part + batch]
            loss, logits = _head_step(head, xs[idx], ys[idx], weight, t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == ys[idx]).sum())
            total += len(idx)
        head.eval()
        with torch.no_grad():
            val_logits = head(vx).numpy()
        val_loss, val_acc = loss_and_accuracy(val_logits, val_y)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / total, "train_accuracy": correct / total, "val_loss": val_loss, "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"]}
        state = EpochEnd(epoch + 1, head, improved=chosen.record(row, head, select))
        run_callbacks(callbacks, row, state)
        if state.stop_reason:
            break
    if chosen.state is not None:
        head.load_state_dict(chosen.state)
    if select:
        log(f"  head: best validation accuracy {chosen.best[0]:.4f} (loss {chosen.best[1]:.4f}) after {len(chosen.history)} epochs")
    else:
        log(f"  head: {len(chosen.history)} epochs trained, the last kept")
    return chosen.history


def _training_features(
    features: BackboneFeatures, decoded: DecodedImages, labels: np.ndarray, plan: Plan, config: Config,
) -> tuple[np.ndarray, np.ndarray]:
    """The training photos' features and labels: plain, then ``plan.feature_copies`` augmented copies (bottleneck)."""
    train_x = features(decoded)
    if plan.mode != "bottleneck" or plan.feature_copies <= 0:
        return train_x, labels
    transform = build_augment(config.augment, channels=plan.preprocess.channels)
    aug_key = json.dumps(config.augment.__dict__, sort_keys=True)
    copies = [train_x]
    for copy in range(1, plan.feature_copies + 1):
        copies.append(
            features(
                decoded, variant=f"aug{copy}|seed{config.train.seed}|batch-augment-v1|{aug_key}",
                transform=transform, seed=config.train.seed * 1000 + copy,
            )
        )
    return np.concatenate(copies), np.tile(labels, len(copies))


def fit_head_on_features(
    features: BackboneFeatures,
    decoded: dict[str, DecodedImages],
    labels: dict[str, np.ndarray],
    config: Config,
    num_classes: int,
    callbacks: Sequence[Callback] = (),
    repeat_epochs: int | None = None,
) -> list[dict[str, float]]:
    """Bottleneck training, or the fine-tuning warm start: the head fitted on cached frozen
    features (``repeat_epochs``: see :func:`fit_head`)."""
    plan, log = features.plan, features.log
    train_x, train_y = _training_features(features, decoded["train"], labels["train"], plan, config)
    val_x = features(decoded["val"])
    head_plan = plan
    if plan.mode == "finetune":
        head_plan = Plan(plan.mode, plan.model, plan.preprocess, plan.pretrained, **WARM_START_HEAD, head=plan.head)
    log("  fitting the head on frozen features")
    return fit_head(features.model.head, train_x, train_y, val_x, labels["val"], head_plan, config, num_classes, callbacks, log, repeat_epochs)

